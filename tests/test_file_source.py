"""FileSource: formats, rates, channels, chunked decoding, broken files (generated with soundfile/PyAV)."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from online_gim.streams.feeder import Feeder
from online_gim.streams.ring_buffer import RingBuffer, StreamError
from online_gim.streams.sources.file import AudioFileError, FileSource
from online_gim.streams.window import SAMPLE_RATE

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "big_buck_bunny_small.mp4"


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / SAMPLE_RATE)[np.argmax(spectrum)])


def encode(path: Path, audio: np.ndarray, rate: int, codec: str) -> Path:
    """Writes mono ``audio`` with PyAV (any codec/container FFmpeg can write)."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=rate, layout="mono")
    fmt = stream.codec_context.format.name
    data = audio[None, :]
    if fmt.startswith("s16"):
        data = (data * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        data = (data * (2**31 - 1)).astype(np.int32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.astype(data.dtype)), format=fmt, layout="mono")
    frame.rate, frame.pts = rate, 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def decode_all(source: FileSource) -> np.ndarray:
    return np.concatenate([chunk.samples for chunk in source])


@pytest.mark.parametrize(
    ("name", "rate", "codec"),
    [
        ("a.wav", 16000, "pcm_s16le"),
        ("a.flac", 16000, "flac"),
        ("a.mp3", 44100, "libmp3lame"),
        ("a.ogg", 48000, "libopus"),
        ("a.m4a", 48000, "aac"),
    ],
)
def test_formats_decode_to_16k_mono(tmp_path, name, rate, codec):
    path = encode(tmp_path / name, tone(1.0, rate), rate, codec)
    audio = decode_all(FileSource(path, speed=None))
    assert audio.dtype == np.float32
    assert abs(audio.shape[0] - SAMPLE_RATE) <= 0.01 * SAMPLE_RATE  # lossy codecs may pad a few ms
    assert abs(dominant_frequency(audio) - 440.0) < 3.0
    assert 0.2 < np.abs(audio[2000:-2000]).max() < 0.45


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_rates_are_resampled(tmp_path, rate):
    path = tmp_path / "tone.wav"
    soundfile.write(path, tone(2.0, rate), rate, subtype="FLOAT")
    source = FileSource(path, speed=None)
    assert source.input_rate == rate
    audio = decode_all(source)
    assert abs(audio.shape[0] - 2 * SAMPLE_RATE) <= 2
    assert abs(dominant_frequency(audio) - 440.0) < 1.0
    assert abs(np.abs(audio[2000:-2000]).max() - 0.3) < 0.01


def test_stereo_is_averaged(tmp_path):
    left, right = tone(0.5, SAMPLE_RATE, 440, 0.4), tone(0.5, SAMPLE_RATE, 700, 0.2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    source = FileSource(path, speed=None)
    assert source.input_channels == 2
    np.testing.assert_allclose(decode_all(source), (left + right) / 2, atol=1e-6)


def test_chunks_have_the_requested_size_and_continuous_offsets(tmp_path):
    path = tmp_path / "long.flac"
    soundfile.write(path, tone(3.3, SAMPLE_RATE), SAMPLE_RATE)
    chunks = list(FileSource(path, speed=None, chunk_samples=1000))
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 1000
    assert [c.offset for c in chunks] == [1000 * i for i in range(len(chunks))]
    assert {c.utterance_id for c in chunks} == {"long.flac"} and all(c.phones is None for c in chunks)


def test_a_long_file_is_never_decoded_whole(tmp_path):
    path = tmp_path / "ten-minutes.wav"
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        for _ in range(60):
            out.write(tone(10.0, SAMPLE_RATE))
    whole_file_as_float = 600 * SAMPLE_RATE * 4  # 38 MB
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in FileSource(path, speed=None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 600 * SAMPLE_RATE
    assert peak < whole_file_as_float / 20


def test_the_audio_track_of_an_mp4_plays():
    if not CLIP.is_file():
        pytest.skip("../shared/data/video is missing")
    source = FileSource(CLIP, speed=None)
    assert source.input_rate == 48000
    audio = decode_all(source)
    assert abs(audio.shape[0] / SAMPLE_RATE - 5.3) < 0.1
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05


def test_file_urls_open_too(tmp_path):
    path = tmp_path / "u.wav"
    soundfile.write(path, tone(0.5, SAMPLE_RATE), SAMPLE_RATE)
    source = FileSource(path.as_uri(), speed=None)
    assert source.source_id == "file:u.wav"
    assert decode_all(source).shape[0] == SAMPLE_RATE // 2


def test_missing_empty_and_non_audio_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "missing.wav")
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(AudioFileError, match="is empty"):
        FileSource(tmp_path / "empty.mp3")
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 50)
    with pytest.raises(AudioFileError, match="notes.txt"):
        FileSource(tmp_path / "notes.txt")
    with pytest.raises(AudioFileError, match="directory"):
        FileSource(tmp_path)


def test_random_bytes_are_an_error_not_silence(tmp_path):
    path = tmp_path / "noise.flac"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioFileError, match="noise.flac"):
        decode_all(FileSource(path, speed=None))


def test_a_video_without_audio_is_an_error(tmp_path):
    path = tmp_path / "silent.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    with pytest.raises(AudioFileError, match="no audio track"):
        FileSource(path)


def test_truncated_files_play_what_is_there(tmp_path):
    wav = tmp_path / "cut.wav"
    soundfile.write(wav, tone(1.0, SAMPLE_RATE), SAMPLE_RATE)
    wav.write_bytes(wav.read_bytes()[: 44 + 2 * 7000])
    assert decode_all(FileSource(wav, speed=None)).shape[0] == 7000

    flac = tmp_path / "cut.flac"
    soundfile.write(flac, tone(3.0, SAMPLE_RATE), SAMPLE_RATE)
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    got = []
    with pytest.raises(AudioFileError, match="corrupt audio data in .*cut.flac"):
        for chunk in FileSource(flac, speed=None):
            got.append(chunk.samples)
    decoded = np.concatenate(got)
    assert 0.3 * 3 * SAMPLE_RATE < decoded.shape[0] < 0.6 * 3 * SAMPLE_RATE  # the first half, up to a frame
    np.testing.assert_allclose(decoded, tone(3.0, SAMPLE_RATE)[: decoded.shape[0]], atol=1e-4)


def test_a_corrupt_file_reaches_the_consumer_as_a_stream_error(tmp_path):
    flac = tmp_path / "cut.flac"
    soundfile.write(flac, tone(3.0, SAMPLE_RATE), SAMPLE_RATE)
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    buffer = RingBuffer(window=4000, hop=4000)
    windows = []
    with Feeder(FileSource(flac, speed=None), buffer):
        with pytest.raises(StreamError, match="cut.flac"):
            for window in buffer:
                windows.append(window)
    assert len(windows) >= 5


def test_non_finite_samples_are_passed_through_and_counted(tmp_path, caplog):
    audio = tone(1.0, SAMPLE_RATE)
    audio[100] = np.nan
    audio[200] = -np.inf
    path = tmp_path / "bad.wav"
    soundfile.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    source = FileSource(path, speed=None)
    with caplog.at_level(logging.WARNING):
        decoded = decode_all(source)
    assert np.isnan(decoded[100]) and decoded[200] == -np.inf
    assert source.samples_nonfinite == 2
    assert any("bad.wav" in r.getMessage() for r in caplog.records)


def test_loop_and_windows_through_the_buffer(tmp_path):
    path = tmp_path / "loop.wav"
    soundfile.write(path, tone(0.5, SAMPLE_RATE), SAMPLE_RATE)
    source = FileSource(path, speed=None, loop=True)
    assert FileSource(path).speed == 1.0  # real time by default
    buffer = RingBuffer(window=3000, hop=3000)
    with Feeder(source, buffer):
        windows = [buffer.read_window(timeout=5) for _ in range(6)]
    assert [w.start_sample for w in windows] == [3000 * i for i in range(6)]
    expected = np.tile(tone(0.5, SAMPLE_RATE), 3)[:18000]
    np.testing.assert_allclose(np.concatenate([w.samples.numpy() for w in windows]), expected, atol=1e-4)
    # each pass is its own span of the recording
    assert [(s.start, s.stop) for s in windows[2].spans] == [(0, 2000), (2000, 3000)]
    assert buffer.counters.samples_dropped == 0
