"""Durable state: the codec, the checkpoint store, resume through ``online-gim listen --state``, export
and embed.

The learner is small (3 conv modules of 32 channels and a 16-unit e-prop GRU) so that every state
part (weights, optimisers, running statistics, FAISS memories, traces, RNGs) is there and cheap.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from online_gim.config import ConvLayerConfig, EncoderConfig, LearnerConfig, LossConfig, MemoryConfig
from online_gim.learner import OnlineLearner
from online_gim.state import store as store_module
from online_gim.state.codec import decode, encode
from online_gim.state.export import Encoder
from online_gim.run.audio_state import AUDIO_LAYOUT, ListenState, ListenTotals, audio_locator
from online_gim.run.state import Checkpointer
from online_gim.state.store import (
    MANIFEST,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointStore,
    NoValidCheckpoint,
)
from online_gim.services.cli import main
from online_gim.streams.window import AudioWindow, UtteranceSpan

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "data" / "librispeech-mini" / "LibriSpeech"
WINDOW = 10240
FAULT_CONFIG = f"""
window: {WINDOW}
encoder:
  convs:
    - {{channels: 8, kernel: 10, stride: 5, padding: 2}}
    - {{channels: 8, kernel: 8, stride: 4, padding: 2}}
    - {{channels: 8, kernel: 4, stride: 2, padding: 2}}
    - {{channels: 8, kernel: 4, stride: 2, padding: 2}}
    - {{channels: 8, kernel: 4, stride: 2, padding: 1}}
  gru_hidden: 8
loss: {{prediction_steps: 4, subwindow: 32}}
memory: {{capacity: 256, writes_per_window: 16}}
"""
"""The learner of the listen tests: the GIM stack (10 ms frames) with 8 channels, e-prop GRU."""

needs_audio = pytest.mark.skipif(not AUDIO.is_dir(), reason=f"shared LibriSpeech mini not found at {AUDIO}")


def small_config(**changes) -> LearnerConfig:
    convs = tuple(ConvLayerConfig(channels=32, kernel=k, stride=s, padding=p) for k, s, p in ((10, 5, 2), (8, 4, 2), (4, 2, 2)))
    config = LearnerConfig(
        window=2560,
        encoder=EncoderConfig(convs=convs, gru_hidden=16),
        loss=LossConfig(prediction_steps=4, subwindow=32),
        memory=MemoryConfig(capacity=256, writes_per_window=32),
    )
    return LearnerConfig.model_validate({**config.model_dump(), **changes})


def windows(count: int, *, start: int = 0, seed: int = 1) -> list[AudioWindow]:
    generator = torch.Generator().manual_seed(seed)
    return [
        AudioWindow(
            torch.randn(2560, generator=generator) * 0.1,
            start_sample=(start + i) * 2560,
            source_id="test",
            spans=(UtteranceSpan(0, 2560, f"utt{(start + i) // 3}", "spk"),),
        )
        for i in range(count)
    ]


def trained_learner(steps: int = 6) -> OnlineLearner:
    learner = OnlineLearner(small_config())
    for window in windows(steps):
        learner.step(window)
    return learner


def assert_same_tree(a, b, path: str = "") -> None:
    """Exact equality of two state trees: types (any dict for an OrderedDict), dtypes, shapes, bits."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same_tree(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


# ---------------------------------------------------------------------- codec


def test_codec_round_trips_every_kind_of_value_exactly():
    tree = {
        "tensor": torch.randn(3, 4),
        "bools": torch.tensor([True, False]),
        "bytes": torch.arange(256, dtype=torch.uint8),
        "arrays": [np.arange(5, dtype=np.int64), np.array([-1, 3], dtype=np.int16), np.zeros((2, 0), np.float32)],
        "optimiser": {"state": {0: {"step": torch.tensor(3.0)}, 7: {}}, "betas": (0.9, 0.999)},
        "big": 2**127 + 12345,
        "floats": [0.1, -0.0, float("nan"), float("inf"), float("-inf"), 1e-310],
        "strings": ["a", None, "$not-a-tag"],
        "$dollar": True,
    }
    tensors, skeleton = encode(tree)
    json.dumps(skeleton, allow_nan=False)  # plain JSON: no NaN literals, no Python objects
    restored = decode(json.loads(json.dumps(skeleton)), tensors)
    assert_same_tree(tree, restored)
    assert math.copysign(1.0, restored["floats"][1]) == -1.0


def test_codec_names_what_it_cannot_store():
    with pytest.raises(TypeError, match="/memory/speakers"):
        encode({"memory": {"speakers": np.array(["a", None], dtype=object)}})
    with pytest.raises(TypeError, match="set at /x"):
        encode({"x": {1, 2}})


# ---------------------------------------------------------------------- store


def test_learner_state_is_bit_identical_after_save_and_load(tmp_path):
    learner = trained_learner()
    with CheckpointStore(tmp_path) as store:
        store.save({"learner": learner.state_dict()}, {"model_step": learner.updates})
    with CheckpointStore(tmp_path) as store:
        checkpoint = store.load_newest()
    assert_same_tree(learner.state_dict(), checkpoint.state["learner"])
    resumed = OnlineLearner(small_config())
    resumed.load_state_dict(checkpoint.state["learner"])
    assert_same_tree(learner.state_dict(), resumed.state_dict())
    # ... and it learns on exactly as the original does (RNGs, memories, traces, optimisers all restored)
    for window in windows(3, start=6, seed=2):
        a, b = learner.step(window), resumed.step(window)
        assert [m.loss for m in a.modules] == [m.loss for m in b.modules]
    assert_same_tree(learner.state_dict(), resumed.state_dict())


def test_store_keeps_the_newest_k_and_a_manifest_with_checksums(tmp_path):
    with CheckpointStore(tmp_path, keep=2) as store:
        entries = [store.save({"n": n}, {"model_step": n}) for n in range(5)]
        assert [e.sequence for e in store.entries()] == [4, 5]
        assert store.load_newest().state == {"n": 4}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["version"] == store_module.FORMAT_VERSION
    assert manifest["newest"] == entries[-1].file
    assert [c["sha256"] for c in manifest["checkpoints"]] == [e.sha256 for e in entries[-2:]]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == [e.file for e in entries[-2:]]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog, damage):
    with CheckpointStore(tmp_path, keep=3) as store:
        store.save({"n": torch.arange(1000)})
        newest = store.save({"n": torch.arange(1000) + 1})
    path = tmp_path / newest.file
    data = bytearray(path.read_bytes())
    if damage == "flip":
        for offset in (len(data) // 3, len(data) - 5):  # two bytes of the tensor data
            data[offset] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING), CheckpointStore(tmp_path) as store:
        checkpoint = store.load_newest()
        assert torch.equal(checkpoint.state["n"], torch.arange(1000))
        assert newest.file in caplog.text
        assert len(store.verify()) == 1
        store.save({"n": torch.arange(1000) + 2})  # the damaged one is dropped, not kept as a checkpoint
        assert store.verify() == []
        assert newest.file not in {e.file for e in store.entries()}
    assert not path.exists()


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    with CheckpointStore(tmp_path) as store:
        entry = store.save({"n": 1})
    (tmp_path / entry.file).write_bytes(b"garbage")
    with CheckpointStore(tmp_path) as store, pytest.raises(NoValidCheckpoint, match=entry.file):
        store.load_newest()


def test_another_format_version_is_refused_naming_both_versions(tmp_path, monkeypatch):
    newer = max(store_module.READABLE_VERSIONS) + 1
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "FORMAT_VERSION", newer)
        with CheckpointStore(tmp_path) as store:
            store.save({"n": 1})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    with CheckpointStore(tmp_path) as store, pytest.raises(CheckpointIncompatible, match=f"manifest.json has format version {newer}; .* reads versions 1, 2"):
        store.load_newest()
    manifest["version"] = 1  # an old manifest listing a newer checkpoint: the checkpoint itself is refused
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with CheckpointStore(tmp_path) as store, pytest.raises(CheckpointIncompatible, match=f"has format version {newer}"):
        store.load_newest()


def test_a_lost_or_damaged_manifest_is_recovered_from_the_file_names(tmp_path, caplog):
    with CheckpointStore(tmp_path, keep=3) as store:
        first = store.save({"n": 1})
        second = store.save({"n": 2})
    (tmp_path / second.file).write_bytes(b"x" + (tmp_path / second.file).read_bytes()[1:])
    (tmp_path / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING), CheckpointStore(tmp_path) as store:
        assert [e.file for e in store.entries()] == [first.file]
        assert store.load_newest().state == {"n": 1}
        assert "manifest.json is unreadable" in caplog.text and second.file in caplog.text
    (tmp_path / MANIFEST).unlink()
    with CheckpointStore(tmp_path) as store:
        assert store.load_newest().state == {"n": 1}


def test_leftovers_of_an_interrupted_save_are_ignored_then_removed(tmp_path):
    with CheckpointStore(tmp_path) as store:
        entry = store.save({"n": 1})
    (tmp_path / "ckpt-00000009-0123456789abcdef.safetensors").write_bytes(b"renamed, manifest not yet written")
    (tmp_path / f"{entry.file}.999.tmp").write_bytes(b"half")
    (tmp_path / "manifest.json.999.tmp").write_bytes(b"{")
    with CheckpointStore(tmp_path) as store:
        assert store.load_newest().state == {"n": 1}
        newest = store.save({"n": 2})
        assert newest.sequence == 10  # never reuses a sequence number on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.file, newest.file, MANIFEST, "ckpt-00000009-0123456789abcdef.safetensors"])


def test_a_state_directory_has_one_writer(tmp_path):
    with CheckpointStore(tmp_path):
        with pytest.raises(CheckpointError, match="in use by another online-gim process"):
            CheckpointStore(tmp_path)
        assert CheckpointStore(tmp_path, readonly=True).load_newest() is None  # readers need no lock
    CheckpointStore(tmp_path).close()


def test_a_failed_save_keeps_the_previous_checkpoints_and_listening_goes_on(tmp_path, monkeypatch, caplog):
    learner = trained_learner(2)
    store = CheckpointStore(tmp_path)
    checkpointer = Checkpointer(
        store, learner, layout=AUDIO_LAYOUT, totals=ListenTotals(), locate=audio_locator(None, 2560), every_windows=1
    )
    window = windows(1, start=2)[0]
    checkpointer.on_step(window, None)
    saved_at = checkpointer.last_saved_at
    assert checkpointer.failed == 0 and saved_at is not None and abs(saved_at - time.time()) < 600
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "write_atomic", disk_full)
    with caplog.at_level(logging.ERROR):
        checkpointer.on_step(window, None)
    assert "No space left on device" in caplog.text
    assert checkpointer.written == 1 and checkpointer.failed == 1 and checkpointer.last_saved_at == saved_at
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert store.verify() == []
    checkpointer.close()


def test_a_resumed_run_reports_the_time_of_the_checkpoint_it_resumed_from(tmp_path):
    learner = trained_learner(1)
    with CheckpointStore(tmp_path) as store:
        entry = store.save({"learner": learner.state_dict(), "stream": {"next_sample": 2560, "source_id": "s"},
                            "listen": {}})
    state = ListenState(tmp_path)
    try:
        checkpointer = state.checkpointer(learner, source=None, hop=2560)
        assert checkpointer.written == 0
        assert checkpointer.last_saved_at == datetime.fromisoformat(entry.written_at).timestamp()
    finally:
        state.close()


def test_checkpointer_saves_every_n_windows_every_t_seconds_and_at_close(tmp_path):
    learner = trained_learner(1)
    now = [0.0]
    store = CheckpointStore(tmp_path, keep=10)
    checkpointer = Checkpointer(
        store, learner, layout=AUDIO_LAYOUT, totals=ListenTotals(), locate=audio_locator(None, 2560), every_windows=3,
        every_seconds=10.0, clock=lambda: now[0],
    )
    for index, window in enumerate(windows(7)):
        now[0] = {4: 11.0}.get(index, now[0])  # the clock jumps past 10 s before the 5th window
        checkpointer.on_step(window, None)
    # saves after windows 3 (count), 5 (time: 11 s since the save at 0 s); 6 is only 1 window later
    assert [e.info["windows"] for e in store.entries()] == [3, 5]
    checkpointer.close()
    with CheckpointStore(tmp_path) as reopened:
        entries = reopened.entries()
        saved = reopened.load_newest().state
    assert [e.info["windows"] for e in entries] == [3, 5, 7]
    assert saved["stream"] == {"next_sample": 7 * 2560, "source_id": "stream", "replay": None, "fingerprint": None}
    assert saved["listen"] == {"windows": 7, "utterances": 3, "last_utterance": "utt2", "runs": 0}


def test_a_checkpoint_of_another_config_is_refused_naming_the_field(tmp_path):
    learner = trained_learner(1)
    with CheckpointStore(tmp_path) as store:
        store.save({"learner": learner.state_dict(), "stream": {"next_sample": 2560, "source_id": "s"}, "listen": {}})
    state = ListenState(tmp_path)
    other = OnlineLearner(small_config(loss=LossConfig(prediction_steps=5, subwindow=32)))
    before = {k: v.clone() for k, v in other.stages[0].module.state_dict().items()}
    with pytest.raises(ValueError, match="loss.prediction_steps: saved 4, now 5"):
        state.restore(other)
    state.close()
    assert all(torch.equal(before[k], v) for k, v in other.stages[0].module.state_dict().items())


# ---------------------------------------------------------------------- listen --state, export, embed


@pytest.fixture(scope="module")
def fault_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(FAULT_CONFIG)
    return path


def listen_args(state: Path, config: Path, *extra: str) -> list[str]:
    return [
        "listen", "--source", "librispeech", "--root", str(AUDIO), "--speed", "max", "--no-http", "--quiet",
        "--config", str(config), "--state", str(state), *extra,
    ]


def newest_state(directory: Path) -> dict:
    return CheckpointStore(directory, readonly=True).load_newest().state


@needs_audio
@pytest.mark.slow
def test_resume_and_continue_equals_an_uninterrupted_run(tmp_path, fault_config, capsys):
    summary = tmp_path / "summary.json"
    assert main(listen_args(tmp_path / "whole", fault_config, "--max-windows", "30")) == 0
    assert main(listen_args(tmp_path / "split", fault_config, "--max-windows", "13", "--checkpoint-every-windows", "5")) == 0
    assert main(listen_args(tmp_path / "split", fault_config, "--max-windows", "17", "--summary-json", str(summary))) == 0
    assert "resuming from ckpt-00000003-" in capsys.readouterr().err
    document = json.loads(summary.read_text())
    assert document["resumed_from_step"] == 13 and document["checkpoints_written"] == 1
    whole, split = newest_state(tmp_path / "whole"), newest_state(tmp_path / "split")
    assert split["listen"] == {**whole["listen"], "runs": 2}
    assert split["stream"] == whole["stream"]
    assert split["stream"]["next_sample"] == 30 * WINDOW
    a, b = whole["learner"], split["learner"]
    assert a["counters"] == b["counters"]
    for stage_a, stage_b in zip(a["stages"], b["stages"]):
        for name, weight in stage_a["module"].items():
            torch.testing.assert_close(stage_b["module"][name], weight, rtol=1e-5, atol=1e-6)
    for memory_a, memory_b in zip(a["memories"], b["memories"]):
        assert np.array_equal(memory_a["positions"], memory_b["positions"])
    torch.testing.assert_close(b["hidden"], a["hidden"], rtol=1e-5, atol=1e-6)


@needs_audio
def test_listen_refuses_a_state_of_another_config_and_leaves_it_untouched(tmp_path, fault_config, capsys):
    assert main(listen_args(tmp_path / "s", fault_config, "--max-windows", "1")) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert main(listen_args(tmp_path / "s", fault_config, "--max-windows", "1", "--seed", "3")) == 2
    error = capsys.readouterr().err
    assert "cannot resume from" in error and "seed: saved 0, now 3" in error
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before


@needs_audio
@pytest.mark.slow
def test_export_and_embed_reproduce_the_learner_features(tmp_path, fault_config, capsys):
    from online_gim.audio_files import decode_file

    state, model, features = tmp_path / "s", tmp_path / "model.pt", tmp_path / "features"
    assert main(listen_args(state, fault_config, "--max-windows", "6")) == 0
    assert main(["export", "--state", str(state), "--out", str(model)]) == 0
    payload = torch.load(model, weights_only=True)
    assert set(payload) == {"format", "version", "config", "modules", "input_norm", "model_step"}
    assert payload["model_step"] == 6
    files = sorted(AUDIO.rglob("*.flac"))[:2]
    assert main(["embed", "--model", str(model), *map(str, files), "--out-dir", str(features), "--module", "2"]) == 0
    learner = OnlineLearner(LearnerConfig.model_validate(payload["config"]))
    learner.load_state_dict(newest_state(state)["learner"])
    for path in files:
        written = np.load(features / f"{path.stem}.npy")
        expected = learner.embed(decode_file(path))[2].numpy()
        assert written.dtype == np.float32 and written.shape == expected.shape
        np.testing.assert_array_equal(written, expected)
    assert Encoder.load(model).num_modules == 6
    assert main(["embed", "--model", str(model), str(tmp_path / "missing.wav"), "--out-dir", str(features)]) == 1
    assert main(["embed", "--model", str(model), str(files[0]), "--module", "6"]) == 2
    assert main(["export", "--state", str(tmp_path / "nothing"), "--out", str(model)]) == 2
    err = capsys.readouterr().err
    assert "missing.wav" in err and "--module must be between 0 and 5" in err and "does not exist" in err


def test_large_float_tensors_are_packed_losslessly_and_smaller():
    """Packing (codec ``$packed``) keeps every bit and stores fewer bytes (the high bytes of
    weights, moments and ReLU encodings share few values)."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(512, 1024, generator=generator) * 0.04
    tree = {"w": weights, "m": (weights * 1e-3).bfloat16(), "a": np.maximum(weights.numpy(), 0), "i": torch.arange(70000)}
    tensors, skeleton = encode(tree)
    back = decode(skeleton, tensors)
    assert torch.equal(back["w"], tree["w"]) and torch.equal(back["m"], tree["m"]) and np.array_equal(back["a"], tree["a"])
    assert torch.equal(back["i"], tree["i"])
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored < 0.9 * sum(t.numel() * t.element_size() for t in (tree["w"], tree["m"], tree["i"])) + tree["a"].nbytes
