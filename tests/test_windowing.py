"""Window positions, the drop bookkeeping, end-aligned labels and offline windowing."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import online_gim.streams.chunk
import online_gim.streams.sources.base
import online_gim.streams.windowing
from online_gim.streams.chunk import AudioChunk, expand_frame_labels, frame_labels_of
from online_gim.streams.ring_buffer import iter_windows
from online_gim.streams.window import FRAME_SAMPLES, UNKNOWN_LABEL
from online_gim.streams.windowing import WindowSchedule, WindowSpec


@pytest.mark.parametrize("module", [online_gim.streams.chunk, online_gim.streams.windowing, online_gim.streams.sources.base])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_window_spec_defaults_and_validation():
    spec = WindowSpec()
    assert (spec.window, spec.hop) == (20480, 20480)
    assert spec.count(20480 * 3 + 5) == 3 and spec.count(20479) == 0
    assert WindowSpec(100, 25).count(200) == 5
    with pytest.raises(ValueError):
        WindowSpec(100, 101)
    with pytest.raises(ValueError):
        WindowSpec(0, 0)


def test_schedule_counts_emitted_dropped_and_pending_samples():
    schedule = WindowSchedule(WindowSpec(window=100, hop=100))
    assert not schedule.ready(99) and schedule.ready(100)
    assert schedule.emit() == 0
    assert schedule.skip_to(oldest=250) == (2, 200)  # windows 1 and 2 lost, samples 100..299
    assert schedule.next_start == 300
    assert schedule.skip_to(oldest=300) == (0, 0)
    assert schedule.emit() == 300
    assert (schedule.samples_windowed, schedule.samples_dropped, schedule.pending(455)) == (200, 200, 55)


def test_expand_frame_labels_aligns_to_the_end():
    labels = np.array([7, 8, 9])
    phones = expand_frame_labels(labels, num_samples=3 * FRAME_SAMPLES + 37)
    assert (phones[:37] == UNKNOWN_LABEL).all()
    assert phones[37:].tolist() == [7] * 160 + [8] * 160 + [9] * 160
    # labels longer than the audio lose their first frames
    assert expand_frame_labels(labels, num_samples=200).tolist() == [8] * 40 + [9] * 160
    assert (expand_frame_labels(None, 50) == UNKNOWN_LABEL).all()


def test_window_phones_are_exact_on_the_label_grid_and_nearest_off_it():
    labels = np.arange(10, dtype=np.int16)
    phones = expand_frame_labels(labels, num_samples=10 * FRAME_SAMPLES + 60)  # grid starts at 60
    assert frame_labels_of(phones[60 + 320 : 60 + 960]).tolist() == [2, 3, 4, 5]
    # a window starting 50 samples after a label boundary: each frame takes the label at its centre
    assert frame_labels_of(phones[60 + 50 : 60 + 50 + 640]).tolist() == [0, 1, 2, 3]
    assert frame_labels_of(phones[60 + 90 : 60 + 90 + 640]).tolist() == [1, 2, 3, 4]


def test_chunk_validation_and_slicing():
    chunk = AudioChunk(np.arange(10), phones=np.arange(10), utterance_id="u", offset=5)
    assert chunk.samples.dtype == np.float32 and chunk.phones.dtype == np.int16
    part = chunk.slice(3, 7)
    assert part.samples.tolist() == [3, 4, 5, 6] and part.offset == 8 and part.utterance_id == "u"
    assert chunk.slice(8, 100).end_offset == chunk.end_offset
    assert AudioChunk(np.zeros(3), utterance_id="u", offset=15).continues(chunk)
    assert not AudioChunk(np.zeros(3), utterance_id="u", offset=0).continues(chunk)
    with pytest.raises(ValueError):
        AudioChunk(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        AudioChunk(np.zeros(3), phones=np.zeros(4))


def test_iter_windows_cuts_a_chunk_stream_without_losses():
    rng = np.random.default_rng(1)
    utterances, position = [], 0
    for i in range(6):
        n = int(rng.integers(500, 3000))
        labels = rng.integers(0, 41, size=n // FRAME_SAMPLES - 1)
        utterances.append((f"s{i % 2}-1-{i}", f"s{i % 2}", position, n, labels))
        position += n
    total = position

    def chunks():
        for uid, speaker, start, n, labels in utterances:
            phones = expand_frame_labels(labels, n)
            for begin in range(0, n, 700):
                end = min(n, begin + 700)
                yield AudioChunk(
                    np.arange(start + begin, start + end, dtype=np.float32),
                    phones=phones[begin:end],
                    utterance_id=uid,
                    speaker_id=speaker,
                    offset=begin,
                )

    windows = list(iter_windows(chunks(), window=1280, hop=640, source_id="offline"))
    assert len(windows) == WindowSpec(1280, 640).count(total)
    for window in windows:
        np.testing.assert_array_equal(
            window.samples.numpy(), np.arange(window.start_sample, window.start_sample + 1280, dtype=np.float32)
        )
        # every span is an utterance's true extent clipped to the window
        for span in window.spans:
            uid, speaker, start, n, labels = next(u for u in utterances if u[0] == span.utterance_id)
            assert span.speaker_id == speaker
            assert span.start == max(0, start - window.start_sample)
            assert span.stop == min(1280, start + n - window.start_sample)
        # every frame's phone is the label at its centre sample
        for f, phone in enumerate(window.phones):
            centre = window.start_sample + f * FRAME_SAMPLES + FRAME_SAMPLES // 2
            uid, speaker, start, n, labels = next(u for u in utterances if u[2] <= centre < u[2] + u[3])
            assert phone == expand_frame_labels(labels, n)[centre - start]
