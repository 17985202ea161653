"""The LibriSpeech corpus index and its replay as one continuous stream (shared data + generated trees)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from online_gim.streams.corpora.librispeech import LibriSpeechCorpus
from online_gim.streams.feeder import Feeder
from online_gim.streams.ring_buffer import RingBuffer
from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.sources.librispeech import LibriSpeechReplay, ReplayPosition
from online_gim.streams.sources.synth import SynthSource
from online_gim.streams.window import FRAME_SAMPLES, SAMPLE_RATE, UNKNOWN_LABEL

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech-mini"
ROOT = DATA / "LibriSpeech"
LABELS = DATA / "LibriSpeech100_labels_split"
LABELLED = ("2911-12359-0007", "4051-11218-0044")

needs_shared_data = pytest.mark.skipif(not ROOT.is_dir(), reason="../shared/data/librispeech-mini is missing")


# ---------------------------------------------------------------- the shared real sample
@needs_shared_data
def test_corpus_index_of_the_shared_sample(caplog):
    with caplog.at_level(logging.WARNING):
        corpus = LibriSpeechCorpus(ROOT, LABELS)
    assert len(corpus) == 12
    assert corpus.speakers == ("1088", "2412", "2911", "4051", "4397", "5393", "5678", "6476")
    assert tuple(u.id for u in corpus.labelled) == LABELLED
    assert corpus["4051-11218-0044"].speaker == "4051" and corpus["4051-11218-0044"].chapter == "11218"
    assert corpus["1088-134315-0000"].phones is None
    # the 4 label lines without audio: skipped with ONE warning that says how many
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 label lines" in warnings[0].getMessage()
    assert corpus.labels_without_audio == 4
    with pytest.raises(FileNotFoundError, match="train_split.txt"):
        corpus.split("train")


@needs_shared_data
def test_replay_at_max_speed_is_one_continuous_stream_with_every_sample_once():
    corpus = LibriSpeechCorpus(ROOT, LABELS)
    audio = {u.id: soundfile.read(u.path, dtype="float32")[0] for u in corpus}
    starts, position = {}, 0
    for u in corpus:  # sorted order
        starts[u.id] = position
        position += audio[u.id].shape[0]
    total = position
    expected_stream = np.concatenate([audio[u.id] for u in corpus])

    replay = LibriSpeechReplay(corpus, speed=None)
    buffer = RingBuffer(window=20480, hop=20480, source_id=replay.source_id)
    with Feeder(replay, buffer):
        windows = list(buffer)

    # every sample exactly once: windows = floor(total / window), the remainder reported
    assert len(windows) == total // 20480
    assert buffer.remainder_samples == total % 20480
    counters = buffer.counters
    assert counters.samples_in == total and counters.samples_dropped == 0 and counters.windows_dropped == 0
    assert counters.files_skipped == 0
    got = np.concatenate([w.samples.numpy() for w in windows])
    np.testing.assert_array_equal(got, expected_stream[: len(windows) * 20480])
    assert [w.start_sample for w in windows] == [20480 * k for k in range(len(windows))]

    # windows cross utterance boundaries; spans tell where each utterance is
    crossing = [w for w in windows if len(w.spans) > 1]
    assert crossing
    for window in windows:
        for span in window.spans:
            assert span.start == max(0, starts[span.utterance_id] - window.start_sample)
            end = starts[span.utterance_id] + audio[span.utterance_id].shape[0]
            assert span.stop == min(20480, end - window.start_sample)
            assert span.speaker_id == span.utterance_id.split("-")[0]

    # the 8 speaker ids
    assert {s.speaker_id for w in windows for s in w.spans} == set(corpus.speakers)
    assert len(corpus.speakers) == 8

    # the two labelled utterances' phones, per 10 ms frame, aligned to the END of their audio
    labelled_frames = 0
    for window in windows:
        assert window.phones is not None and window.phones.shape == (20480 // FRAME_SAMPLES,)
        for f, phone in enumerate(window.phones):
            centre = window.start_sample + f * FRAME_SAMPLES + FRAME_SAMPLES // 2
            uid = next(u for u in starts if starts[u] <= centre < starts[u] + audio[u].shape[0])
            labels = corpus[uid].phones
            if labels is None:
                assert phone == UNKNOWN_LABEL
                continue
            from_end = starts[uid] + audio[uid].shape[0] - 1 - centre  # samples after the centre
            index = len(labels) - 1 - from_end // FRAME_SAMPLES
            assert phone == (labels[index] if index >= 0 else UNKNOWN_LABEL)
            labelled_frames += phone != UNKNOWN_LABEL
    # the labels cover the utterances but 0-2 frames at their start (and the tail beyond the last window)
    assert labelled_frames > 0.9 * sum(len(corpus[u].phones) for u in LABELLED)


@needs_shared_data
def test_replay_of_the_last_labelled_frames_matches_the_label_file():
    """The last label of an utterance lands on the last 160 samples of its audio."""
    corpus = LibriSpeechCorpus(ROOT, LABELS)
    for uid in LABELLED:
        replay = LibriSpeechReplay(LibriSpeechCorpus(corpus[uid].path, LABELS), speed=None)
        chunks = list(replay)
        phones = np.concatenate([c.phones for c in chunks])
        labels = corpus[uid].phones
        assert phones.shape[0] - len(labels) * FRAME_SAMPLES in range(0, 2 * FRAME_SAMPLES + 1)
        tail = phones[phones.shape[0] - len(labels) * FRAME_SAMPLES :]
        np.testing.assert_array_equal(tail[::FRAME_SAMPLES], labels)
        assert (phones[: phones.shape[0] - len(labels) * FRAME_SAMPLES] == UNKNOWN_LABEL).all()


# ---------------------------------------------------------------- generated trees
def write_utterance(root: Path, uid: str, audio: np.ndarray, rate: int = SAMPLE_RATE, *, ext="flac", subtype=None) -> Path:
    speaker, chapter, _ = uid.split("-")
    folder = root / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.{ext}"
    soundfile.write(path, audio, rate, subtype=subtype)
    return path


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def replay_all(replay: LibriSpeechReplay) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for chunk in replay:
        out.setdefault(chunk.utterance_id, []).append(chunk.samples)
    return {uid: np.concatenate(parts) for uid, parts in out.items()}


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_sample_rates_are_resampled_to_16k(tmp_path, rate):
    write_utterance(tmp_path, "1-1-1", tone(1.0, rate), rate)
    audio = replay_all(LibriSpeechReplay(tmp_path, speed=None))["1-1-1"]
    assert abs(audio.shape[0] - SAMPLE_RATE) <= 1
    assert abs(dominant_frequency(audio) - 440.0) < 2.0
    assert 0.25 < np.abs(audio[1000:-1000]).max() < 0.35  # the level is kept


def test_stereo_is_downmixed_by_averaging(tmp_path):
    left, right = tone(0.5, SAMPLE_RATE, 440, 0.4), tone(0.5, SAMPLE_RATE, 440, 0.2)
    write_utterance(tmp_path, "1-1-1", np.stack([left, right], axis=1), subtype="FLOAT", ext="wav")
    audio = replay_all(LibriSpeechReplay(tmp_path, speed=None))["1-1-1"]
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_broken_files_are_skipped_named_and_counted_and_the_stream_goes_on(tmp_path, caplog):
    good = {uid: tone(0.3, SAMPLE_RATE, 300 + 100 * i) for i, uid in enumerate(["1-1-1", "1-1-5", "2-1-9"])}
    for uid, audio in good.items():
        write_utterance(tmp_path, uid, audio)
    broken = {
        "1-1-2": b"",  # empty
        "1-1-3": np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes(),  # corrupt
        "1-1-4": b"This is a transcript, not audio.\n" * 20,  # non-audio
    }
    for uid, data in broken.items():
        (tmp_path / "1" / "1" / f"{uid}.flac").write_bytes(data)
    write_utterance(tmp_path, "2-1-8", tone(2.0, SAMPLE_RATE))  # truncated FLAC: the decoder loses sync
    truncated = tmp_path / "2" / "1" / "2-1-8.flac"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    write_utterance(tmp_path, "2-1-7", tone(1.0, SAMPLE_RATE), ext="wav")  # truncated WAV: the rest plays
    short_wav = tmp_path / "2" / "1" / "2-1-7.wav"
    short_wav.write_bytes(short_wav.read_bytes()[: 44 + 2 * 6000])

    replay = LibriSpeechReplay(tmp_path, speed=None)
    buffer = RingBuffer(window=1600, hop=1600)
    with caplog.at_level(logging.WARNING), Feeder(replay, buffer):
        windows = list(buffer)
    assert replay.files_skipped == 4 and buffer.counters.files_skipped == 4
    skipped = {r.getMessage() for r in caplog.records if "skipping" in r.getMessage()}
    for uid in [*broken, "2-1-8"]:
        assert sum(uid in message for message in skipped) == 1
    played = sum(a.shape[0] for a in good.values()) + 6000
    assert buffer.counters.samples_in == played
    assert len(windows) == played // 1600
    assert {s.utterance_id for w in windows for s in w.spans} == {*good, "2-1-7"}


def test_non_finite_samples_are_passed_through_and_counted(tmp_path, caplog):
    audio = tone(1.0, SAMPLE_RATE)
    audio[5000] = np.nan
    audio[9000:9003] = np.inf
    write_utterance(tmp_path, "1-1-1", audio, ext="wav", subtype="FLOAT")
    write_utterance(tmp_path, "1-1-2", tone(1.0, SAMPLE_RATE), ext="wav", subtype="FLOAT")
    replay = LibriSpeechReplay(tmp_path, speed=None)
    with caplog.at_level(logging.WARNING):
        windows = list(iter_windows(replay, window=4000, hop=4000))
    assert replay.samples_nonfinite == 4
    assert any("1-1-1" in r.getMessage() and "non-finite" in r.getMessage() for r in caplog.records)
    finite = [bool(np.isfinite(w.samples.numpy()).all()) for w in windows]
    assert finite == [True, False, False, True, True, True, True, True]  # samples 5000 and 9000 in windows 1, 2


def test_labels_unlabelled_utterances_and_splits(tmp_path, caplog):
    audio_root, labels = tmp_path / "audio", tmp_path / "labels"
    write_utterance(audio_root, "10-2-0", tone(0.1, SAMPLE_RATE))  # 1600 samples, labels: 9 frames
    write_utterance(audio_root, "10-2-1", tone(0.05, SAMPLE_RATE))  # no labels
    write_utterance(audio_root, "11-3-0", tone(0.05, SAMPLE_RATE))
    labels.mkdir()
    (labels / "converted_aligned_phones.txt").write_text(
        "10-2-0 1 2 3 4 5 6 7 8 9\n11-3-0 4 4 4 4\n99-9-9 1 1\n"
    )
    (labels / "train_split.txt").write_text("10-2-0\n10-2-1\n")
    (labels / "test_split.txt").write_text("11-3-0\n")
    with caplog.at_level(logging.WARNING):
        corpus = LibriSpeechCorpus(audio_root, labels)
    assert [r.getMessage() for r in caplog.records if "label lines" in r.getMessage()] == [
        f"1 label lines in {labels / 'converted_aligned_phones.txt'} have no audio under {audio_root}; skipped"
    ]
    assert [u.id for u in corpus.split("train")] == ["10-2-0", "10-2-1"]
    assert [u.id for u in LibriSpeechCorpus(audio_root, labels, split="test")] == ["11-3-0"]

    chunks = list(LibriSpeechReplay(corpus, speed=None, chunk_samples=700))
    labelled = np.concatenate([c.phones for c in chunks if c.utterance_id == "10-2-0"])
    assert labelled[:160].tolist() == [UNKNOWN_LABEL] * 160  # 1600 samples, 9 frames: aligned to the end
    assert labelled[160::160].tolist() == list(range(1, 10))
    unlabelled = np.concatenate([c.phones for c in chunks if c.utterance_id == "10-2-1"])
    assert (unlabelled == UNKNOWN_LABEL).all()
    # without a label folder the chunks have no phone track at all
    assert all(c.phones is None for c in LibriSpeechReplay(audio_root, speed=None))


def make_tree(root: Path, count: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    utterances = {}
    for i in range(count):
        uid = f"{i % 3}-7-{i}"
        utterances[uid] = (rng.standard_normal(int(rng.integers(900, 3000))) * 0.1).astype(np.float32)
        write_utterance(root, uid, utterances[uid], ext="wav", subtype="FLOAT")
    return utterances


def test_orders_are_sorted_or_shuffled_by_seed_and_reshuffled_per_pass(tmp_path):
    make_tree(tmp_path)
    ids = sorted(u.id for u in LibriSpeechCorpus(tmp_path))
    sorted_order = [u.id for u in LibriSpeechReplay(tmp_path).order_of(0)]
    assert sorted_order == ids
    a = LibriSpeechReplay(tmp_path, order="shuffle", seed=1)
    b = LibriSpeechReplay(tmp_path, order="shuffle", seed=1)
    c = LibriSpeechReplay(tmp_path, order="shuffle", seed=2)
    assert [u.id for u in a.order_of(0)] == [u.id for u in b.order_of(0)]
    orders = {tuple(u.id for u in a.order_of(loop)) for loop in range(5)} | {tuple(u.id for u in c.order_of(0))}
    assert len(orders) > 1 and all(sorted(o) == ids for o in orders)


def test_loop_position_locate_and_resume(tmp_path):
    utterances = make_tree(tmp_path)
    total = sum(a.shape[0] for a in utterances.values())

    def stream(replay, n_samples):
        parts, got = [], 0
        for chunk in replay:
            parts.append(chunk)
            got += len(chunk)
            if got >= n_samples:
                break
        return parts

    replay = LibriSpeechReplay(tmp_path, order="shuffle", seed=5, loop=True, speed=None, chunk_samples=500)
    running = iter(replay)
    chunks = stream(running, 3 * total + 123)
    samples = np.concatenate([c.samples for c in chunks])
    # three passes and a bit, each in its own order, without gaps
    expected = np.concatenate(
        [utterances[u.id] for loop in range(4) for u in replay.order_of(loop)]
    )[: samples.shape[0]]
    np.testing.assert_array_equal(samples, expected)
    assert replay.position.loop == 3 and replay.position.stream_sample == samples.shape[0]

    # resume from the current position gives exactly what the same replay would deliver next
    resumed = LibriSpeechReplay(
        tmp_path, order="shuffle", seed=5, loop=True, speed=None, chunk_samples=500, start=replay.position
    )
    more_resumed = np.concatenate([c.samples for c in stream(resumed, 2 * total)])
    more_original = np.concatenate([c.samples for c in stream(running, 2 * total)])
    n = min(more_resumed.shape[0], more_original.shape[0])
    np.testing.assert_array_equal(more_resumed[:n], more_original[:n])

    # locate a stream position (as a window's start_sample) and restart there
    where = replay.locate(total + 1234)
    assert where.loop == 1 and where.stream_sample == total + 1234
    from_there = np.concatenate(
        [c.samples for c in stream(LibriSpeechReplay(tmp_path, order="shuffle", seed=5, loop=True, speed=None, start=where), 5000)]
    )
    np.testing.assert_array_equal(from_there[:5000], expected[total + 1234 : total + 6234])
    assert ReplayPosition.from_dict(where.to_dict()) == where


def test_a_looping_replay_of_only_broken_files_fails_instead_of_spinning(tmp_path):
    (tmp_path / "1" / "1").mkdir(parents=True)
    (tmp_path / "1" / "1" / "1-1-1.flac").write_bytes(b"not audio")
    replay = LibriSpeechReplay(tmp_path, loop=True, speed=None)
    with pytest.raises(RuntimeError, match="no decodable audio"):
        list(replay)
    assert replay.files_skipped == 1


def test_empty_or_missing_roots_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LibriSpeechReplay(tmp_path / "nope")
    with pytest.raises(ValueError, match="no utterances"):
        LibriSpeechReplay(tmp_path)
    with pytest.raises(FileNotFoundError, match="converted_aligned_phones"):
        LibriSpeechCorpus(tmp_path, tmp_path)


def test_several_roots_and_replay_defaults(tmp_path):
    make_tree(tmp_path / "a", 3)
    write_utterance(tmp_path / "b", "9-9-9", tone(0.1, SAMPLE_RATE))
    replay = LibriSpeechReplay([tmp_path / "a", tmp_path / "b"])
    assert replay.speed == 1.0 and not replay.loop and replay.source_id == "librispeech"
    assert len(replay.corpus) == 4 and "9" in replay.corpus.speakers


def test_synth_source_loops_a_labelled_corpus(tmp_path):
    write_utterance(tmp_path, "1-1-0", tone(0.2, SAMPLE_RATE))
    write_utterance(tmp_path, "2-1-0", tone(0.2, SAMPLE_RATE, 600))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "converted_aligned_phones.txt").write_text("1-1-0 " + " ".join(["3"] * 19) + "\n")
    source = SynthSource(corpus_dir=tmp_path, speed=None)
    assert source.source_id == "synth" and source.loop and source.speed is None
    chunks = []
    for chunk in source:
        chunks.append(chunk)
        if sum(len(c) for c in chunks) >= 4 * 6400:
            break
    assert {c.speaker_id for c in chunks} == {"1", "2"}
    assert all(c.phones is not None for c in chunks)
    assert any((c.phones == 3).any() for c in chunks)
    assert source.position.loop >= 3
    assert SynthSource(corpus_dir=tmp_path).speed == 1.0


def test_resume_at_a_window_continues_the_same_stream_and_clock(tmp_path):
    make_tree(tmp_path)

    def run(start=None, origin=0, count=6):
        replay = LibriSpeechReplay(tmp_path, order="shuffle", seed=9, loop=True, speed=None, start=start)
        buffer = RingBuffer(window=1000, hop=500, origin=origin)
        with Feeder(replay, buffer):
            windows = [buffer.read_window(timeout=5) for _ in range(count)]
            return replay, windows

    replay, first = run(count=12)
    where = replay.locate(first[6].start_sample)
    _, resumed = run(start=where, origin=where.stream_sample)
    assert [w.start_sample for w in resumed] == [w.start_sample for w in first[6:]]
    for a, b in zip(resumed, first[6:]):
        np.testing.assert_array_equal(a.samples.numpy(), b.samples.numpy())
        assert a.spans[1:] == b.spans[1:] and a.spans[0].utterance_id == b.spans[0].utterance_id


def test_locate_while_the_reader_thread_replays(tmp_path):
    # locate() runs on the learner's thread while the feeder's thread appends to the replay's
    # history; walking a history that grows underneath must neither fail nor mislocate
    for i in range(4):
        write_utterance(tmp_path, f"1-1-{i}", np.full(40, 0.1 * (i + 1), dtype=np.float32), ext="wav", subtype="FLOAT")
    replay = LibriSpeechReplay(tmp_path, loop=True, speed=None)
    stop = threading.Event()

    def read():
        for _ in replay:
            if stop.is_set():
                break

    reader = threading.Thread(target=read, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
    reader.start()
    try:
        deadline = time.monotonic() + 5.0
        while replay.utterances_played < 1024 and time.monotonic() < deadline:
            time.sleep(0.01)  # a long history: every locate walks all of it
        calls, deadline = 0, time.monotonic() + 0.5
        while time.monotonic() < deadline:
            with pytest.raises(ValueError, match="not in the replay's recent history"):
                replay.locate(-1)
            newest = replay.position.stream_sample - 1
            where = replay.locate(newest)
            assert where.stream_sample == newest and where.offset == newest % 40
            assert where.index == (newest // 40) % 4 and where.loop == newest // 160
            calls += 1
    finally:
        stop.set()
        reader.join(timeout=5)
        sys.setswitchinterval(interval)
    assert calls > 0 and not reader.is_alive()
