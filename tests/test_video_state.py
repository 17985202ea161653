"""Durable state of the video learner: checkpoints of a video listen run and resuming them
(``online-gim listen --source video --state DIR``), beside the audio learner's state directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from online_gim.learner import OnlineLearner
from online_gim.run.audio_state import ListenState
from online_gim.run.video_state import VideoListenState, VideoListenTotals
from online_gim.state.store import CheckpointError, CheckpointStore
from online_gim.video import VideoLearner
from online_gim.video.scenes import write_scene_video
from online_gim.streams.sources.video import VideoFrame
from online_gim.streams.video_window import VideoWindower
from conftest import SMALL_LEARNER_YAML
from test_checkpoint import assert_same_tree
from test_checkpoint import small_config as small_audio_config
from test_checkpoint import windows as audio_windows
from test_video_learner import CLIP, SMALL_VIDEO_YAML, listen, needs_clip, scene_stream, small_config

CLI = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())"]


def test_windower_numbers_frames_from_its_origin():
    windower = VideoWindower(window=4, hop=2, frame_rate=10.0, origin=100)
    frames = [VideoFrame(torch.zeros(1, 2, 2), pts=i / 10, index=i) for i in range(6)]
    windows = [w for w in map(windower.push, frames) if w is not None]
    assert [w.start_frame for w in windows] == [100, 102]
    assert windows[1].positions.tolist() == [102, 103, 104, 105]
    assert windows[0].times.tolist() == pytest.approx([10.0, 10.1, 10.2, 10.3])
    with pytest.raises(ValueError, match="origin"):
        VideoWindower(window=4, hop=2, frame_rate=10.0, origin=-1)


def test_a_resumed_video_state_holds_the_learner_the_stream_position_and_the_totals(tmp_path):
    config = small_config()
    learner = VideoLearner(config)
    state = VideoListenState(tmp_path)
    assert state.checkpoint is None and state.origin == 0 and state.resumed_from_step == 0
    checkpointer = state.checkpointer(learner, every_windows=5)
    windower = VideoWindower(window=config.window_frames, hop=config.hop, frame_rate=25.0, source_id="scenes")
    learned = [window for window in map(windower.push, scene_stream(config)[:150]) if window is not None]
    for window in learned:
        checkpointer.on_step(window, learner.step(window))
    stepped, end = len(learned), learned[-1].start_frame + learned[-1].num_frames
    assert stepped % 5 and checkpointer.written == stepped // 5 and learner.updates > 0
    checkpointer.close()  # saves the windows since the last checkpoint, releases the directory
    assert checkpointer.written == stepped // 5 + 1

    resumed = VideoListenState(tmp_path)
    try:
        assert resumed.origin == end == 148  # 12 windows: 16 + 11 * 12 frames (no flush)
        assert resumed.totals == VideoListenTotals(windows=stepped, frames=end, runs=2)
        assert resumed.resumed_from_step == learner.updates
        again = VideoLearner(config)
        resumed.restore(again)
        assert_same_tree(again.state_dict(), learner.state_dict())
        assert "frames" in resumed.describe()
    finally:
        resumed.close()


def test_a_state_directory_is_refused_to_the_other_learner(tmp_path):
    video_dir, audio_dir = tmp_path / "video", tmp_path / "audio"
    video_learner = VideoLearner(small_config())
    video_checkpointer = VideoListenState(video_dir).checkpointer(video_learner)
    windower = VideoWindower(window=16, hop=12, frame_rate=25.0)
    window = [windower.push(frame) for frame in scene_stream(video_learner.config)[:16]][-1]
    video_checkpointer.on_step(window, video_learner.step(window))
    video_checkpointer.close()
    audio_learner = OnlineLearner(small_audio_config())
    audio_checkpointer = ListenState(audio_dir).checkpointer(audio_learner, source=None, hop=2560)
    audio_window = audio_windows(1)[0]
    audio_learner.step(audio_window)
    audio_checkpointer.on_step(audio_window, None)
    audio_checkpointer.close()

    with pytest.raises(CheckpointError, match=r"another learner \(listen with --source video\)"):
        ListenState(video_dir)
    with pytest.raises(CheckpointError, match=r"another learner \(listen with an audio --source"):
        VideoListenState(audio_dir)
    # a refusal releases the directory and leaves its checkpoints as they were
    for directory, state_type, key in ((video_dir, VideoListenState, "video_learner"), (audio_dir, ListenState, "learner")):
        reopened = state_type(directory)
        assert key in reopened.checkpoint.state and reopened.store.verify() == []
        reopened.close()


def test_listen_video_checkpoints_and_resumes_with_frame_numbers_going_on(tmp_path):
    small_video_yaml = tmp_path / "small_video.yaml"
    small_video_yaml.write_text(SMALL_VIDEO_YAML)
    video = write_scene_video(tmp_path / "scenes.mp4", scenes=2, seconds_per_scene=2.0, size=(24, 32))
    frames = video.scenes * video.frames_per_scene
    state = tmp_path / "state"
    args = (
        "--source", "video", "--path", str(video.path), "--speed", "max", "--video-config", str(small_video_yaml),
        "--state", str(state), "--checkpoint-every-windows", "3",
    )
    first = listen(*args, "--summary-json", str(tmp_path / "first.json"))
    second = listen(*args, "--summary-json", str(tmp_path / "second.json"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "no checkpoint yet" in first.stderr and "resuming from ckpt-" in second.stderr
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("first.json", "second.json"))
    assert one["frames_processed"] == two["frames_processed"] == frames
    windows = one["video_windows_processed"]
    assert one["video_checkpoints_written"] == two["video_checkpoints_written"] == windows // 3 + (windows % 3 > 0)
    assert one["video_resumed_from_step"] == 0 and two["video_resumed_from_step"] == one["video_model_step"] > 0
    assert two["video_model_step"] > one["video_model_step"]
    with CheckpointStore(state, readonly=True) as store:
        saved = store.load_newest().state
    assert saved["video_stream"]["next_frame"] == 2 * frames  # the second run numbered its frames after the first's
    assert saved["video_listen"] == {"windows": 2 * windows, "frames": 2 * frames, "runs": 2}
    assert saved["video_learner"]["counters"]["updates"] == two["video_model_step"]

    other_config = listen("--source", "video", "--path", str(video.path), "--state", str(state))
    assert other_config.returncode == 2 and "cannot resume from" in other_config.stderr
    assert "Traceback" not in other_config.stderr
    export = subprocess.run(
        [*CLI, "export", "--state", str(state), "--out", str(tmp_path / "model.pt")], capture_output=True, text=True
    )
    assert export.returncode == 2 and "video learner's checkpoints" in export.stderr


@needs_clip
@pytest.mark.slow
def test_listen_av_keeps_both_learners_states_and_resumes_both(tmp_path):
    small_video_yaml, small_audio_yaml = tmp_path / "small_video.yaml", tmp_path / "small.yaml"
    small_video_yaml.write_text(SMALL_VIDEO_YAML)
    small_audio_yaml.write_text(SMALL_LEARNER_YAML)
    state = tmp_path / "state"
    args = (
        "--source", "av", "--path", str(CLIP), "--speed", "max", "--config", str(small_audio_yaml),
        "--video-config", str(small_video_yaml), "--state", str(state),
    )
    first = listen(*args, "--summary-json", str(tmp_path / "first.json"))
    second = listen(*args, "--summary-json", str(tmp_path / "second.json"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("first.json", "second.json"))
    for summary in (one, two):  # each learner wrote its checkpoint at the end of the file
        assert summary["checkpoints_written"] == summary["video_checkpoints_written"] == 1
        assert summary["frames_processed"] == 132
    assert two["resumed_from_step"] == one["model_step"] > 0
    assert two["video_resumed_from_step"] == one["video_model_step"] > 0
    with CheckpointStore(state, readonly=True) as audio, CheckpointStore(state / "video", readonly=True) as video:
        assert audio.load_newest().state["listen"]["runs"] == 2
        assert video.load_newest().state["video_stream"]["next_frame"] == 2 * 132
    # the video learner's directory is a video state directory of its own
    alone = listen("--source", "video", "--path", str(CLIP), "--speed", "max", "--video-config", str(small_video_yaml),
                   "--state", str(state / "video"), "--max-windows", "1", "--summary-json", str(tmp_path / "alone.json"))
    assert alone.returncode == 0, alone.stderr
    assert json.loads((tmp_path / "alone.json").read_text())["video_resumed_from_step"] == two["video_model_step"]
    refused = listen("--source", "video", "--path", str(CLIP), "--state", str(state))
    assert refused.returncode == 2 and "video/ inside it" in refused.stderr
