"""The ring buffer: exact sample accounting with a counter signal, drops under overload, labels, threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from online_gim.streams.chunk import AudioChunk
from online_gim.streams.feeder import Feeder
from online_gim.streams.ring_buffer import RingBuffer, StreamError
from online_gim.streams.sources.base import AudioSource
from online_gim.streams.window import UNKNOWN_LABEL


def ramp(start: int, stop: int) -> np.ndarray:
    """A counter signal: sample ``i`` of the stream has the value ``i`` (exact in float32 below 2**24)."""
    return np.arange(start, stop, dtype=np.float32)


def push_ramp(buffer: RingBuffer, sizes, start: int = 0) -> int:
    position = start
    for size in sizes:
        buffer.push(AudioChunk(ramp(position, position + size)))
        position += size
    return position


def check_window_is_ramp(window, length: int) -> None:
    assert window.samples.shape == (length,)
    expected = ramp(window.start_sample, window.start_sample + length)
    np.testing.assert_array_equal(window.samples.numpy(), expected)


def check_accounting(buffer: RingBuffer) -> None:
    c = buffer.counters
    assert c.samples_in == buffer.samples_windowed + c.samples_dropped + buffer.pending_samples


def test_normal_load_every_sample_exactly_once():
    rng = np.random.default_rng(0)
    buffer = RingBuffer(4 * 2048, window=2048, hop=2048, source_id="ramp")
    sizes = rng.integers(1, 3000, size=400)
    position, windows = 0, []
    for size in sizes:
        position = push_ramp(buffer, [size], position)
        while (window := buffer.read_window(timeout=0)) is not None:
            windows.append(window)
    buffer.close()
    assert buffer.read_window(timeout=0) is None and buffer.exhausted
    total = int(sizes.sum())
    assert len(windows) == total // 2048
    assert [w.start_sample for w in windows] == [k * 2048 for k in range(len(windows))]
    for window in windows:
        check_window_is_ramp(window, 2048)
        assert window.source_id == "ramp"
    got = np.concatenate([w.samples.numpy() for w in windows])
    np.testing.assert_array_equal(got, ramp(0, len(windows) * 2048))  # no sample lost or duplicated
    c = buffer.counters
    assert (c.samples_in, c.samples_dropped, c.windows_dropped, c.windows_emitted) == (total, 0, 0, len(windows))
    assert buffer.remainder_samples == total % 2048
    check_accounting(buffer)


def test_overlapping_windows_hold_the_right_samples():
    buffer = RingBuffer(500, window=160, hop=40)  # backlog < 160 + largest chunk 250
    windows = []
    position = 0
    for size in [7, 100, 33, 1, 250, 90] * 5:
        position = push_ramp(buffer, [size], position)
        while (window := buffer.read_window(timeout=0)) is not None:
            windows.append(window)
    assert [w.start_sample for w in windows] == [40 * k for k in range(len(windows))]
    assert len(windows) == (position - 160) // 40 + 1
    for window in windows:
        check_window_is_ramp(window, 160)
    assert buffer.samples_windowed == 40 * (len(windows) - 1) + 160
    assert buffer.counters.samples_dropped == 0
    check_accounting(buffer)


def test_overload_drops_the_oldest_and_counts_exactly():
    buffer = RingBuffer(100, window=40, hop=40)
    push_ramp(buffer, [10] * 100)  # 1000 samples, nobody reads: only the newest 100 survive
    c = buffer.counters
    # the oldest sample held is 900: windows 0..22 (up to sample 920) can no longer be cut
    assert (c.samples_in, c.windows_dropped, c.samples_dropped) == (1000, 23, 920)
    windows = [buffer.read_window(timeout=0), buffer.read_window(timeout=0)]
    assert buffer.read_window(timeout=0) is None
    assert [w.start_sample for w in windows] == [920, 960]
    for window in windows:
        check_window_is_ramp(window, 40)
    assert c.windows_emitted == 2
    assert c.samples_in == c.samples_dropped + c.windows_emitted * 40 + buffer.pending_samples
    check_accounting(buffer)


def test_a_chunk_longer_than_the_buffer_keeps_its_tail():
    buffer = RingBuffer(64, window=32, hop=16)
    buffer.push(AudioChunk(ramp(0, 1000)))
    windows = []
    while (window := buffer.read_window(timeout=0)) is not None:
        windows.append(window)
    assert [w.start_sample for w in windows] == [944, 960]  # the first window fully inside [936, 1000)
    for window in windows:
        check_window_is_ramp(window, 32)
    c = buffer.counters
    assert c.windows_dropped == 59 and c.samples_dropped == 944
    check_accounting(buffer)


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(1, 64),
    hop_fraction=st.floats(0.01, 1.0),
    extra=st.integers(0, 100),
    steps=st.lists(st.tuples(st.integers(0, 150), st.integers(0, 4)), min_size=1, max_size=60),
)
def test_accounting_holds_for_any_push_and_read_pattern(window, hop_fraction, extra, steps):
    hop = max(1, int(window * hop_fraction))
    buffer = RingBuffer(window + extra, window=window, hop=hop)
    position, windows = 0, []
    for size, reads in steps:
        position = push_ramp(buffer, [size], position)
        for _ in range(reads):
            if (item := buffer.read_window(timeout=0)) is not None:
                windows.append(item)
        check_accounting(buffer)
    buffer.close()
    windows.extend(buffer)
    c = buffer.counters
    starts = [w.start_sample for w in windows]
    assert all(s % hop == 0 for s in starts) and starts == sorted(set(starts))
    for item in windows:
        check_window_is_ramp(item, window)
    # every window index before the next one was either emitted or counted as dropped
    assert c.windows_emitted + c.windows_dropped == buffer.next_window_start // hop
    # the samples in no window are exactly the dropped ones plus the remainder at the end
    covered = np.zeros(position, dtype=bool)
    for s in starts:
        covered[s : s + window] = True
    assert int(covered.sum()) == buffer.samples_windowed
    assert position - int(covered.sum()) == c.samples_dropped + buffer.remainder_samples
    assert buffer.remainder_samples < window + hop
    check_accounting(buffer)


def test_labels_and_spans_travel_with_the_samples_across_the_wrap():
    buffer = RingBuffer(900, window=320, hop=160)  # the last window wraps around
    phones_a = np.repeat(np.arange(5, dtype=np.int16), 100)  # 5 phones of 100 samples
    buffer.push(AudioChunk(ramp(0, 300), phones=phones_a[:300], utterance_id="a", speaker_id="s1"))
    buffer.push(AudioChunk(ramp(300, 500), phones=phones_a[300:], utterance_id="a", speaker_id="s1", offset=300))
    assert buffer.read_window(timeout=0).spans[0].utterance_id == "a"
    buffer.push(AudioChunk(ramp(500, 700), utterance_id="b", speaker_id="s2"))  # no phone track
    buffer.push(AudioChunk(ramp(700, 800), utterance_id="b", speaker_id="s2"))  # offset 0 again: a new span
    buffer.push(AudioChunk(ramp(800, 1000)))  # unknown utterance
    windows = list(iter(lambda: buffer.read_window(timeout=0), None))
    assert [w.start_sample for w in windows] == [160, 320, 480, 640]
    w160, w320, w480, w640 = windows
    check_window_is_ramp(w480, 320)
    # per-frame phones: the label at each 10 ms frame's centre sample (160 + 80 = 240 -> phone 2)
    assert w160.phones.tolist() == [2, 4]
    assert w320.phones.tolist() == [4, UNKNOWN_LABEL]
    assert [(s.start, s.stop, s.utterance_id, s.speaker_id) for s in w320.spans] == [
        (0, 180, "a", "s1"),
        (180, 320, "b", "s2"),
    ]
    assert [(s.start, s.stop, s.utterance_id) for s in w480.spans] == [(0, 20, "a"), (20, 220, "b"), (220, 320, "b")]
    assert w480.phones.tolist() == [UNKNOWN_LABEL, UNKNOWN_LABEL]
    assert [(s.start, s.stop, s.utterance_id) for s in w640.spans] == [(0, 60, "b"), (60, 160, "b")]
    assert w640.frame_speakers() == ["s2", None]


def test_windows_without_any_phone_track_have_phones_none():
    buffer = RingBuffer(window=160, hop=160)
    buffer.push(AudioChunk(np.zeros(400, np.float32), utterance_id="mic:x"))
    window = buffer.read_window(timeout=0)
    assert window.phones is None
    assert [(s.start, s.stop, s.utterance_id, s.speaker_id) for s in window.spans] == [(0, 160, "mic:x", None)]


def test_fill_ratio_backlog_and_windows_ready():
    buffer = RingBuffer(400, window=100, hop=50)
    assert buffer.fill_ratio == 0.0 and buffer.windows_ready == 0
    push_ramp(buffer, [200])
    assert buffer.fill_ratio == 0.5 and buffer.backlog_samples == 200 and buffer.windows_ready == 3
    buffer.read_window(timeout=0)
    assert buffer.backlog_samples == 150 and buffer.windows_ready == 2
    push_ramp(buffer, [1000], start=200)
    assert buffer.fill_ratio <= 1.0 and buffer.counters.samples_dropped > 0


def test_read_window_times_out_then_ends_cleanly():
    buffer = RingBuffer(window=100, hop=100)
    started = time.monotonic()
    assert buffer.read_window(timeout=0.05) is None
    assert 0.04 <= time.monotonic() - started < 1.0
    assert not buffer.exhausted
    push_ramp(buffer, [250])
    buffer.close()
    assert buffer.read_window(timeout=10) is not None
    assert buffer.read_window(timeout=10) is not None
    started = time.monotonic()
    assert buffer.read_window(timeout=10) is None  # returns at once: the stream has ended
    assert time.monotonic() - started < 1.0
    assert buffer.exhausted and buffer.remainder_samples == 50
    assert buffer.push(AudioChunk(ramp(0, 10))) is False  # pushes after the end are ignored
    assert buffer.counters.samples_in == 250


def test_a_blocked_reader_wakes_up_on_push_and_on_close():
    buffer = RingBuffer(window=100, hop=100)
    results = []
    reader = threading.Thread(target=lambda: results.extend([buffer.read_window(), buffer.read_window()]))
    reader.start()
    time.sleep(0.05)
    push_ramp(buffer, [100])
    time.sleep(0.05)
    buffer.close()
    reader.join(2)
    assert not reader.is_alive()
    assert results[0].start_sample == 0 and results[1] is None


def test_a_source_error_reaches_the_consumer_after_the_buffered_windows():
    buffer = RingBuffer(window=100, hop=100)
    push_ramp(buffer, [150])
    buffer.close(error=OSError("device unplugged"))
    assert buffer.read_window(timeout=0) is not None
    with pytest.raises(StreamError, match="device unplugged"):
        buffer.read_window(timeout=0)


def test_wait_for_space_blocks_until_the_consumer_reads():
    buffer = RingBuffer(200, window=100, hop=100)
    push_ramp(buffer, [200])
    assert buffer.wait_for_space(50, timeout=0.05) is False
    threading.Timer(0.05, buffer.read_window).start()
    assert buffer.wait_for_space(50, timeout=2) is True


class RampSource(AudioSource):
    """A finite counter signal in chunks."""

    def __init__(self, total: int, chunk: int, *, speed=None, fail_after=None) -> None:
        self.total, self.chunk, self.speed, self.fail_after = total, chunk, speed, fail_after
        self.source_id = "ramp"

    def __iter__(self):
        for start in range(0, self.total, self.chunk):
            if self.fail_after is not None and start >= self.fail_after:
                raise OSError("decoder crashed")
            yield AudioChunk(ramp(start, min(start + self.chunk, self.total)), utterance_id="r", offset=start)

    @property
    def files_skipped(self) -> int:
        return 3


def test_unpaced_feeder_with_a_slow_consumer_loses_nothing():
    buffer = RingBuffer(3 * 1000, window=1000, hop=500)
    total = 50_000
    windows = []
    with Feeder(RampSource(total, 777), buffer):
        for window in buffer:
            time.sleep(0.001)
            windows.append(window)
    assert len(windows) == (total - 1000) // 500 + 1
    for window in windows:
        check_window_is_ramp(window, 1000)
        assert window.spans[0].utterance_id == "r"
    c = buffer.counters
    assert c.samples_dropped == 0 and c.windows_dropped == 0 and c.files_skipped == 3
    check_accounting(buffer)


def test_paced_feeder_keeps_time_and_drops_for_a_stalled_consumer():
    buffer = RingBuffer(4000, window=1000, hop=1000)
    source = RampSource(16_000, 400, speed=20.0)  # 1 s of audio in 50 ms
    started = time.monotonic()
    feeder = Feeder(source, buffer).start()
    time.sleep(0.02)
    assert buffer.read_window(timeout=5) is not None
    feeder.join(5)  # the consumer stalls until the source has finished: overwrites happen
    elapsed = time.monotonic() - started
    assert 0.045 <= elapsed < 2.0
    windows = list(buffer)
    for window in windows:
        check_window_is_ramp(window, 1000)
    c = buffer.counters
    assert c.samples_in == 16_000 and c.windows_dropped > 0
    assert c.windows_emitted + c.windows_dropped == 16
    assert c.samples_dropped == c.windows_dropped * 1000
    check_accounting(buffer)


def test_feeder_hands_a_source_error_to_the_consumer():
    buffer = RingBuffer(window=1000, hop=1000)
    with Feeder(RampSource(10_000, 500, fail_after=2500), buffer):
        with pytest.raises(StreamError, match="decoder crashed"):
            for _ in buffer:
                pass
    assert buffer.counters.windows_emitted == 2


def test_feeder_stop_ends_an_endless_source():
    class Endless(AudioSource):
        source_id, speed = "zeros", 1.0

        def __iter__(self):
            while True:
                yield AudioChunk(np.zeros(160, np.float32))

    buffer = RingBuffer(window=160, hop=160)
    feeder = Feeder(Endless(), buffer).start()
    assert buffer.read_window(timeout=2) is not None
    feeder.stop()
    assert not feeder.running and buffer.closed


def test_origin_continues_the_stream_clock_of_a_resumed_stream():
    buffer = RingBuffer(window=100, hop=50, origin=1_000_000)
    buffer.push(AudioChunk(ramp(0, 120), utterance_id="u", offset=7))
    buffer.push(AudioChunk(ramp(120, 160), utterance_id="v"))
    first, second = buffer.read_window(timeout=0), buffer.read_window(timeout=0)
    assert (first.start_sample, second.start_sample) == (1_000_000, 1_000_050)
    assert [(s.start, s.stop, s.utterance_id) for s in second.spans] == [(0, 70, "u"), (70, 100, "v")]
    np.testing.assert_array_equal(second.samples.numpy(), ramp(50, 150))
    assert buffer.write_position == 1_000_160 and buffer.next_window_start == 1_000_100
    assert buffer.counters.source_seconds == pytest.approx(1_000_160 / 16000)
