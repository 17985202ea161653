"""GIM/CPC label files: every malformed line is reported once with file and line and skipped; a
mostly malformed file is one clear error; labels far from their audio's length are ignored (issue 15)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from online_gim.services.cli import main
from online_gim.streams.corpora.librispeech import PHONES_FILE, LibriSpeechCorpus
from online_gim.streams.corpora.phone_labels import LabelFileError, read_phone_labels
from online_gim.streams.sources.librispeech import LibriSpeechReplay
from online_gim.streams.window import UNKNOWN_LABEL

SECONDS = 2.0
FRAMES = int(SECONDS * 100)  # 10 ms label frames of each utterance


def corpus_tree(tmp_path: Path, label_lines: list[str], utterances: int = 3) -> tuple[Path, Path]:
    """``utterances`` 2-second tones ``1-1-0`` ... in LibriSpeech's layout, and a label folder with ``label_lines``."""
    root = tmp_path / "LibriSpeech"
    (root / "1" / "1").mkdir(parents=True)
    t = np.arange(int(SECONDS * 16_000)) / 16_000
    for index in range(utterances):
        soundfile.write(root / "1" / "1" / f"1-1-{index}.wav", 0.1 * np.sin(2 * np.pi * (200 + 50 * index) * t), 16_000)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / PHONES_FILE).write_text("\n".join(label_lines) + "\n")
    return root, labels


def good(uid: str, frames: int = FRAMES - 2) -> str:
    return f"{uid} " + " ".join(str(i % 41) for i in range(frames))


def test_each_malformed_line_is_reported_once_with_its_line_and_skipped(tmp_path, caplog):
    lines = [
        good("1-1-0"),
        "1-1-1 0 0 70000 0",            # 2: overflows int16 (was an OverflowError traceback)
        "1-1-1 0 99 1",                 # 3: out of range (was a ValueError from the probes)
        "1-1-1 0 -5 1",                 # 4: negative
        "1-1-1 0 3.5 1",                # 5: not an integer (was a bare "invalid literal for int()")
        "1-1-1 0 99999999999999999999999",  # 6: beyond int64
        "1-1-1",                        # 7: no labels
        "",
        good("1-1-1"),                  # 9
        good("1-1-1", 50),              # 10: a duplicate id (silently overrode the first)
        good("1-1-2"), good("9-9-9"), good("8-8-8"), good("7-7-7"), good("6-6-6"), good("5-5-5"),
    ]
    root, labels = corpus_tree(tmp_path, lines)
    with caplog.at_level(logging.WARNING):
        corpus = LibriSpeechCorpus(root, labels)
    path = labels / PHONES_FILE
    expected = {
        2: "phone class 70000 is outside 0..40",
        3: "phone class 99 is outside 0..40",
        4: "phone class -5 is outside 0..40",
        5: "label '3.5' is not an integer phone class",
        6: "phone class 99999999999999999999999 is outside 0..40",
        7: "no labels after the utterance id",
        10: "utterance 1-1-1 is already labelled on line 9",
    }
    for number, problem in expected.items():
        assert caplog.text.count(f"{path}:{number}: {problem}; line skipped") == 1
    assert caplog.text.count("line skipped") == len(expected)
    assert len(corpus["1-1-1"].phones) == FRAMES - 2 and corpus["1-1-1"].labels_at == f"{path}:9"
    assert corpus.labels_without_audio == 5


def test_a_mostly_malformed_label_file_is_one_clear_error(tmp_path, capsys):
    root, labels = corpus_tree(tmp_path, [good("1-1-0"), "1-1-1 a b c", "1-1-2 0 41", "x"])
    with pytest.raises(LabelFileError, match=r"3 of its 4 lines are malformed, the first one line 2: label 'a'"):
        read_phone_labels(labels / PHONES_FILE)
    code = main(["listen", "--source", "librispeech", "--root", str(root), "--labels", str(labels), "--no-http", "--quiet"])
    assert code == 2
    error = capsys.readouterr().err
    assert "is not a GIM/CPC phone label file" in error and "Traceback" not in error


def test_labels_far_from_the_audio_are_reported_once_and_ignored(tmp_path, caplog):
    root, labels = corpus_tree(tmp_path, [good("1-1-0", 2 * FRAMES), good("1-1-1", FRAMES - 1), good("1-1-2", FRAMES - 30)])
    replay = LibriSpeechReplay(root, labels, speed=None, loop=True)
    with caplog.at_level(logging.WARNING):
        phones: dict[str, list[np.ndarray]] = {}
        for chunk in replay:
            phones.setdefault(chunk.utterance_id, []).append(chunk.phones)
            if sum(len(p) for p in phones.get("1-1-2", [])) >= 2 * SECONDS * 16_000:  # a second pass
                break
    replay.close()
    path = labels / PHONES_FILE
    assert caplog.text.count(f"{path}:1: {2 * FRAMES} label frames for {FRAMES} frames (2.00 s) of audio") == 1
    assert caplog.text.count(f"{path}:3: {FRAMES - 30} label frames for {FRAMES} frames") == 1
    assert "1-1-1" not in caplog.text
    assert all((np.concatenate(phones[uid]) == UNKNOWN_LABEL).all() for uid in ("1-1-0", "1-1-2"))
    assert (np.concatenate(phones["1-1-1"]) != UNKNOWN_LABEL).any()


def test_listen_with_malformed_labels_runs_and_writes_its_summary(tmp_path, small_config):
    lines = [good("1-1-0"), "1-1-1 0 99 1", "1-1-2 0 0 70000"] + [good(f"9-9-{i}") for i in range(3)]
    root, labels = corpus_tree(tmp_path, lines, utterances=3)
    summary = tmp_path / "s.json"
    code = main([
        "listen", "--source", "librispeech", "--root", str(root), "--labels", str(labels), "--speed", "max",
        "--no-http", "--quiet", "--config", str(small_config), "--summary-json", str(summary),
    ])
    assert code == 0
    document = json.loads(summary.read_text())
    assert document["stop_reason"] == "end_of_stream" and document["windows_processed"] == 4
