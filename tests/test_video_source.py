"""VideoFrameSource: every frame with its timestamp, size and colour conversion, errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from online_gim.streams.sources.file import FileSource
from online_gim.streams.sources.video import VideoFileError, VideoFrame, VideoFrameSource
from online_gim.streams.window import SAMPLE_RATE

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "big_buck_bunny_small.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason="../shared/data/video is missing")


@needs_clip
def test_the_shared_clip_yields_all_132_frames_with_increasing_timestamps():
    source = VideoFrameSource(CLIP)
    assert source.native_size == (240, 320) and source.frame_rate == 25.0
    frames = list(source)
    assert len(frames) == 132
    assert [f.index for f in frames] == list(range(132))
    pts = np.array([f.pts for f in frames])
    assert (np.diff(pts) > 0).all()
    np.testing.assert_allclose(np.diff(pts), 0.04, atol=1e-6)
    assert pts[0] == pytest.approx(0.0) and pts[-1] == pytest.approx(5.24)
    first = frames[0]
    assert isinstance(first, VideoFrame)
    assert first.image.shape == (3, 240, 320) and first.image.dtype == torch.float32
    images = torch.stack([f.image for f in frames[::10]])
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.05


@needs_clip
def test_size_and_gray_conversion():
    frames = list(VideoFrameSource(CLIP, size=(48, 64), gray=True, max_frames=5))
    assert len(frames) == 5
    assert all(f.image.shape == (1, 48, 64) for f in frames)
    rgb = next(iter(VideoFrameSource(CLIP, size=(48, 64))))
    assert rgb.image.shape == (3, 48, 64)
    # gray is the luminance of the RGB frame (BT.601 weights), up to rounding of the two conversions
    luma = (0.299 * rgb.image[0] + 0.587 * rgb.image[1] + 0.114 * rgb.image[2])
    assert (frames[0].image[0] - luma).abs().mean() < 0.03


@needs_clip
def test_the_clip_feeds_audio_and_video_at_once():
    audio = np.concatenate([c.samples for c in FileSource(CLIP, speed=None)])
    frames = list(VideoFrameSource(CLIP, size=(24, 32), gray=True))
    assert abs(audio.shape[0] / SAMPLE_RATE - 5.3) < 0.1
    assert len(frames) == 132 and frames[-1].pts < audio.shape[0] / SAMPLE_RATE


def test_a_generated_video_keeps_its_frames_colours_and_times(tmp_path):
    path = tmp_path / "bars.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)] * 3
    for colour in colours:
        frame = av.VideoFrame.from_ndarray(np.tile(np.array(colour, np.uint8), (48, 64, 1)), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()

    frames = list(VideoFrameSource(path))
    assert len(frames) == len(colours)
    np.testing.assert_allclose([f.pts for f in frames], np.arange(len(colours)) / 10, atol=1e-6)
    for frame, colour in zip(frames, colours):
        mean = frame.image.mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(mean, np.array(colour) / 255, atol=0.08)


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFrameSource(tmp_path / "missing.mp4")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 40)
    with pytest.raises(VideoFileError, match="notes.mp4"):
        VideoFrameSource(tmp_path / "notes.mp4")
    wav = tmp_path / "sound.wav"
    import soundfile

    soundfile.write(wav, np.zeros(1600, np.float32), SAMPLE_RATE)
    with pytest.raises(VideoFileError, match="no video track"):
        VideoFrameSource(wav)
    with pytest.raises(VideoFileError, match="cannot open"):
        VideoFrameSource("/dev/video-that-does-not-exist", device_format="v4l2")
    with pytest.raises(ValueError):
        VideoFrameSource(wav, size=(0, 10))
