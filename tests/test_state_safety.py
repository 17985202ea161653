"""The state directory is owned safely and never poisoned (issue 15).

The store: a lock on the directory itself, any sequence number, only its own files deleted, its
stale temporary files removed at start, a damaged manifest recovered, a directory that cannot be
written refused at start. ``listen --state``: failed checkpoints stop the run with exit code 3 and
say how much learning is not saved; a checkpoint holding NaN/Inf (written before the step guard) is
repaired on resume, or refused when its learned weights are not finite; export and embed never
write NaN. A hostile file (``1e30 * randn``) through ``listen --state`` leaves a finite state.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from online_gim.config import load_config
from online_gim.finite import nonfinite_paths
from online_gim.learner import OnlineLearner
from online_gim.run.state import MAX_CONSECUTIVE_FAILURES
from online_gim.state import store as store_module
from online_gim.state.store import MANIFEST, CheckpointError, CheckpointStore
from online_gim.services.cli import EXIT_NOT_SAVED, main
from online_gim.streams.window import AudioWindow
from test_checkpoint import FAULT_CONFIG, WINDOW

@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(FAULT_CONFIG)
    return path


def write_wav(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples.astype(np.float32), 16_000, subtype="FLOAT")
    return path


def speech_wav(path: Path, windows: int, seed: int = 0) -> Path:
    """A voiced, syllable-like signal at about -20 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(windows * WINDOW) / 16_000
    voiced = sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 10)) * (1 - np.cos(2 * np.pi * 4 * t))
    return write_wav(path, 0.05 * voiced + 0.01 * rng.standard_normal(t.shape[0]))


def listen(state: Path, config: Path, audio: Path, summary: Path, *extra: str) -> int:
    return main([
        "listen", "--source", "file", "--path", str(audio), "--speed", "max", "--no-http", "--quiet",
        "--config", str(config), "--state", str(state), "--summary-json", str(summary), *extra,
    ])


def newest(state: Path) -> dict:
    return CheckpointStore(state, readonly=True).load_newest().state


# ---------------------------------------------------------------------- the lock


def test_the_state_directory_cannot_be_taken_over_whatever_happens_inside_it(tmp_path):
    with CheckpointStore(tmp_path / "K") as store:
        store.save({"n": 1})
        for path in (tmp_path / "K").iterdir():  # rm K/* (the lock file of old versions included)
            path.unlink()
        (tmp_path / "K" / "lock").write_text("")
        with pytest.raises(CheckpointError, match="in use by another online-gim process"):
            CheckpointStore(tmp_path / "K")
    CheckpointStore(tmp_path / "K").close()  # released when the owner ends


# ---------------------------------------------------------------------- names and deletion


def test_any_sequence_number_names_prunes_and_recovers(tmp_path):
    planted = tmp_path / "ckpt-999999999-0123456789abcdef.safetensors"  # not a checkpoint of this store
    planted.write_bytes(b"someone else's file")
    with CheckpointStore(tmp_path, keep=2) as store:
        entries = [store.save({"n": n}) for n in range(4)]
        assert [e.sequence for e in entries] == [1_000_000_000, 1_000_000_001, 1_000_000_002, 1_000_000_003]
        assert [e.file for e in store.entries()] == [e.file for e in entries[-2:]]
    assert planted.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.glob("ckpt-1*")) == [e.file for e in entries[-2:]]
    (tmp_path / MANIFEST).unlink()
    with CheckpointStore(tmp_path) as store:
        assert store.load_newest().state == {"n": 3}  # found by their names without the manifest


def test_a_directory_named_like_a_checkpoint_does_not_fail_saves(tmp_path, caplog):
    (tmp_path / "ckpt-00000050-0123456789abcdef.safetensors").mkdir()
    with caplog.at_level(logging.WARNING), CheckpointStore(tmp_path, keep=1) as store:
        first = store.save({"n": 1})
        second = store.save({"n": 2})
        assert second.sequence == 52 and [e.file for e in store.entries()] == [second.file]
    assert not (tmp_path / first.file).exists() and (tmp_path / "ckpt-00000050-0123456789abcdef.safetensors").is_dir()
    assert "not" not in caplog.text


def test_the_store_deletes_only_its_own_files_and_cleans_its_stale_temporaries_at_start(tmp_path):
    mine = ["ckpt-00000003-0123456789abcdef.safetensors.4242.tmp", f"{MANIFEST}.4242.tmp"]
    theirs = ["important.tmp", "notes.txt", "ckpt-1.tmp", "manifest.json.tmp", "ckpt-00000003-0123456789abcdef.safetensors.x.tmp"]
    for name in mine + theirs:
        (tmp_path / name).write_bytes(b"x" * 100)
    with CheckpointStore(tmp_path, keep=1) as store:
        assert not any((tmp_path / name).exists() for name in mine)  # stale: removed on opening
        for n in range(3):
            store.save({"n": n})
    assert all((tmp_path / name).read_bytes() == b"x" * 100 for name in theirs)


def test_a_manifest_of_wrong_types_or_foreign_files_is_recovered_from_the_checkpoints(tmp_path, caplog):
    (tmp_path / "important.txt").write_text("keep me")
    with CheckpointStore(tmp_path, keep=1) as store:
        entry = store.save({"n": 1})
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    for damage in ({"bytes": str(entry.bytes)}, {"sequence": 1.5}, {"file": "important.txt"}, {"info": [1]}):
        (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "checkpoints": [{**manifest["checkpoints"][0], **damage}]}))
        with caplog.at_level(logging.WARNING), CheckpointStore(tmp_path, keep=1) as store:
            assert store.load_newest().state == {"n": 1}
            assert "recovering the checkpoints from their files" in caplog.text
            entry = store.save({"n": 1})  # prunes by the recovered list: never important.txt
        caplog.clear()
    assert (tmp_path / "important.txt").read_text() == "keep me"


def test_a_save_cut_short_after_its_rename_is_taken_over_not_leaked(tmp_path):
    with CheckpointStore(tmp_path, keep=2) as store:
        store.save({"n": 1})
        manifest = (tmp_path / MANIFEST).read_bytes()
        cut_short = store.save({"n": 2})
    (tmp_path / MANIFEST).write_bytes(manifest)  # the crash came before the manifest was replaced
    with CheckpointStore(tmp_path, keep=2) as store:
        assert store.load_newest().entry.file == cut_short.file
        store.save({"n": 3})
        store.save({"n": 4})
    assert not (tmp_path / cut_short.file).exists()


def test_a_directory_that_cannot_be_written_is_refused_before_anything_is_learned(tmp_path, monkeypatch, config, capsys):
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    (tmp_path / "K").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError, match="cannot be written .*Read-only file system"):
        CheckpointStore(tmp_path / "K")
    audio = speech_wav(tmp_path / "good.wav", 2)
    assert listen(tmp_path / "K", config, audio, tmp_path / "s.json") == 2
    assert "cannot be written" in capsys.readouterr().err and not (tmp_path / "s.json").exists()


# ---------------------------------------------------------------------- failed checkpoints


def test_failing_checkpoints_stop_the_run_with_exit_3_and_say_what_is_not_saved(tmp_path, monkeypatch, config, capsys, caplog):
    audio = speech_wav(tmp_path / "good.wav", 20)

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "write_atomic", disk_full)
    summary = tmp_path / "s.json"
    code = listen(tmp_path / "K", config, audio, summary, "--checkpoint-every-windows", "2")
    document = json.loads(summary.read_text())
    assert code == EXIT_NOT_SAVED == 3
    assert document["stop_reason"] == "checkpoint_failed"
    windows = 2 * MAX_CONSECUTIVE_FAILURES  # stopped at the third failed save, long before the end of the file
    assert document["windows_processed"] == windows < 20
    assert document["checkpoints_written"] == 0 and document["checkpoints_failed"] == MAX_CONSECUTIVE_FAILURES + 1
    assert document["windows_not_saved"] == windows
    assert f"{windows} windows learned by this run are not saved" in capsys.readouterr().err
    assert "No space left on device" in caplog.text and "3 checkpoints in a row could not be written: stopping" in caplog.text


def test_a_state_with_nan_is_never_written(tmp_path, config, caplog):
    from online_gim.run.audio_state import ListenState

    learner = OnlineLearner(load_config(config))
    state = ListenState(tmp_path / "K")
    checkpointer = state.checkpointer(learner, source=None, hop=WINDOW, every_windows=1)
    window = AudioWindow(torch.randn(WINDOW) * 0.1)
    learner.step(window)
    with torch.no_grad():
        learner.stages[0].head.weight_z.fill_(float("nan"))  # a bug anywhere: the checkpoint refuses it
    with caplog.at_level(logging.ERROR):
        checkpointer.on_step(window, None)
    assert checkpointer.written == 0 and checkpointer.failed == 1
    assert "stages.0.head.weight_z" in caplog.text
    state.close()
    assert not list((tmp_path / "K").glob("ckpt-*"))


# ---------------------------------------------------------------------- hostile audio and poisoned states


def test_a_huge_float_file_through_listen_leaves_a_finite_state_and_learning_resumes(tmp_path, config, caplog):
    huge = write_wav(tmp_path / "huge.wav", 1e30 * np.random.default_rng(0).standard_normal(160_000))
    summary = tmp_path / "s.json"
    with caplog.at_level(logging.WARNING):
        assert listen(tmp_path / "K", config, huge, summary) == 0
    document = json.loads(summary.read_text())
    windows = 160_000 // WINDOW
    assert document["windows_skipped_nonfinite"] == windows
    assert document["windows_skipped_by_reason"] == {"level": windows}
    assert "skipped, nothing learned from it: its level (RMS 9.98e+29) is beyond" in caplog.text
    assert nonfinite_paths(newest(tmp_path / "K")["learner"]) == []
    assert listen(tmp_path / "K", config, speech_wav(tmp_path / "good.wav", 4), summary) == 0
    document = json.loads(summary.read_text())
    assert document["model_step"] == 4 and document["windows_skipped_nonfinite"] == 0
    assert nonfinite_paths(newest(tmp_path / "K")["learner"]) == []


def poisoned_checkpoint(state: Path, config: Path, *, weights: bool = False) -> None:
    """A listen checkpoint as the learner before the step guard left it after a hostile window."""
    from online_gim.run.audio_state import ListenState

    learner = OnlineLearner(load_config(config))
    for index in range(3):
        learner.step(AudioWindow(torch.randn(WINDOW) * 0.1, start_sample=index * WINDOW))
    saved = learner.state_dict()
    nan = float("nan")
    saved["input_norm"]["var"] = torch.tensor(nan)
    for stage in saved["stages"][:5]:
        stage["module"]["running_var"] = torch.full_like(stage["module"]["running_var"], nan)
    saved["hidden"] = torch.full_like(saved["hidden"], nan)
    saved["traces"] = {name: torch.full_like(trace, nan) for name, trace in saved["traces"].items()}
    saved["probes"]["standardizer"]["var"] = torch.full_like(saved["probes"]["standardizer"]["var"], nan)
    if weights:
        saved["stages"][1]["module"]["conv.weight"] = torch.full_like(saved["stages"][1]["module"]["conv.weight"], nan)
    listen_state = ListenState(state)
    checkpointer = listen_state.checkpointer(learner, source=None, hop=WINDOW)
    checkpointer.on_step(AudioWindow(torch.zeros(WINDOW), start_sample=2 * WINDOW), None)
    tree, info = checkpointer.snapshot()
    listen_state.store.save({**tree, "learner": saved}, info)
    listen_state.store.close()


def test_a_poisoned_checkpoint_is_repaired_on_resume_and_learning_goes_on(tmp_path, config, caplog):
    poisoned_checkpoint(tmp_path / "K", config)
    model = tmp_path / "model.pt"
    assert main(["export", "--state", str(tmp_path / "K"), "--out", str(model)]) == 2  # never a NaN model
    assert not model.exists()
    summary = tmp_path / "s.json"
    with caplog.at_level(logging.WARNING):
        assert listen(tmp_path / "K", config, speech_wav(tmp_path / "good.wav", 4), summary) == 0
    document = json.loads(summary.read_text())
    assert document["state_repaired"] == [
        "hidden", "input_norm", "probes", "stages.0.module", "stages.1.module", "stages.2.module", "stages.3.module",
        "stages.4.module", "traces",
    ]
    assert "held NaN or Inf in hidden, input_norm" in caplog.text
    assert document["model_step"] == document["resumed_from_step"] + 4
    assert all(loss is not None for loss in document["final_loss"].values())
    assert nonfinite_paths(newest(tmp_path / "K")["learner"]) == []
    assert main(["export", "--state", str(tmp_path / "K"), "--out", str(model)]) == 0


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_them(tmp_path, config, capsys):
    poisoned_checkpoint(tmp_path / "K", config, weights=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "K").iterdir()}
    assert listen(tmp_path / "K", config, speech_wav(tmp_path / "good.wav", 1), tmp_path / "s.json") == 2
    error = capsys.readouterr().err
    assert "its learned weights are not finite (stages.1.module.conv.weight)" in error
    assert {p.name: p.read_bytes() for p in (tmp_path / "K").iterdir()} == before


def test_embed_never_writes_non_finite_features(tmp_path, config, capsys):
    from online_gim.state.export import encoder_payload

    learner = OnlineLearner(load_config(config))
    learner.step(AudioWindow(torch.randn(WINDOW) * 0.1))
    payload = encoder_payload(learner.state_dict())
    torch.save(payload, tmp_path / "model.pt")
    huge = write_wav(tmp_path / "huge.wav", 1e30 * np.random.default_rng(0).standard_normal(40_000))
    assert main(["embed", "--model", str(tmp_path / "model.pt"), str(huge), "--out-dir", str(tmp_path)]) == 1
    assert not (tmp_path / "huge.npy").exists()
    assert "cannot be encoded: its level (RMS" in capsys.readouterr().err
    payload["input_norm"]["var"] = torch.tensor(float("nan"))
    torch.save(payload, tmp_path / "poisoned.pt")
    good = speech_wav(tmp_path / "good.wav", 1)
    assert main(["embed", "--model", str(tmp_path / "poisoned.pt"), str(good), "--out-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "good.npy").exists()
    assert "holds NaN or Inf in input_norm.var" in capsys.readouterr().err
