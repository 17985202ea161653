"""The video learner: windows of frames, temporal CLAPP with the core's pieces, the listen wiring
(``--source video`` and ``--source av``), the frame-retrieval check and the benchmark.

Learner-level tests use small frames (24x32) and a 4-module stack to stay fast; the listen tests
run the CLI as a user would, on the shared clip.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from machine_speed import scaled
from online_gim.local_update import ModuleSchedule
from online_gim.video import VideoLearner, VideoLearnerConfig, load_video_config
from online_gim.video.bench import measure_video_fps_learn
from online_gim.video.decorrelation import EncodingDecorrelation
from online_gim.video.retrieval import nearest_neighbours, same_scene_retrieval, temporal_retrieval
from online_gim.video.scenes import render_scenes, write_scene_video
from online_gim.streams.sources.av import AVSource
from online_gim.streams.sources.file import FileSource
from online_gim.streams.sources.video import VideoFileError, VideoFrame, VideoFrameSource
from online_gim.streams.video_window import VideoWindow, VideoWindower

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "big_buck_bunny_small.mp4"
needs_clip = pytest.mark.skipif(not CLIP.is_file(), reason="../shared/data/video is missing")
LISTEN = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())", "listen"]
SMALL_VIDEO_YAML = """
height: 24
width: 32
encoder:
  convs:
    - {channels: 8}
    - {channels: 16, pool: 2}
    - {channels: 16, pool: 2}
    - {channels: 32, pool: 2}
memory: {capacity: 256}
"""


def small_config(**changes) -> VideoLearnerConfig:
    import yaml

    return VideoLearnerConfig.model_validate({**yaml.safe_load(SMALL_VIDEO_YAML), **changes})


@pytest.fixture(scope="module")
def small_video_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video-config") / "small_video.yaml"
    path.write_text(SMALL_VIDEO_YAML)
    return path


def listen(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LISTEN, "--no-http", "--quiet", *args], capture_output=True, text=True, timeout=scaled(timeout), cwd=ROOT)


def scene_stream(config: VideoLearnerConfig, *, scenes: int = 6, camera_seed: int = 0) -> list[VideoFrame]:
    images = render_scenes(
        scenes=scenes, seconds_per_scene=2.0, size=(config.height, config.width), gray=config.gray, camera_seed=camera_seed
    )
    return [VideoFrame(image=image, pts=i / 25, index=i) for i, image in enumerate(images)]


def learn(learner: VideoLearner, frames: list[VideoFrame], passes: int = 1, **step_options) -> list:
    windower = VideoWindower(window=learner.config.window_frames, hop=learner.config.hop, frame_rate=25.0)
    reports = []
    for _ in range(passes):
        for frame in frames:
            window = windower.push(frame)
            if window is not None:
                reports.append(learner.step(window, **step_options))
    return reports


# ---------------------------------------------------------------------- windows of frames


def test_windows_overlap_by_the_hop_and_the_tail_covers_every_frame():
    windower = VideoWindower(window=5, hop=3, frame_rate=10.0, source_id="v")
    frames = [VideoFrame(torch.full((1, 2, 2), float(i)), pts=i / 10, index=i) for i in range(12)]
    windows = [w for w in map(windower.push, frames) if w is not None]
    tail = windower.flush()
    assert [w.start_frame for w in windows] == [0, 3, 6]
    assert [w.new_frames for w in windows] == [5, 3, 3]
    assert tail is not None and tail.start_frame == 7 and tail.num_frames == 5 and tail.new_frames == 1
    assert windower.flush() is None
    assert sum(w.new_frames for w in windows + [tail]) == 12 == windower.frames_windowed
    for window in windows + [tail]:  # every frame lands at its stream position
        np.testing.assert_array_equal(window.frames[:, 0, 0, 0].numpy(), window.positions)
        np.testing.assert_allclose(window.times, window.positions / 10)


def test_a_looping_file_keeps_stream_positions_and_times_increasing():
    windower = VideoWindower(window=4, hop=4, frame_rate=10.0)
    passes = [VideoFrame(torch.zeros(1, 2, 2), pts=i / 10, index=i) for i in range(6)] * 2
    windows = [w for w in map(windower.push, passes) if w is not None]
    times = np.concatenate([w.times for w in windows])
    positions = np.concatenate([w.positions for w in windows])
    np.testing.assert_array_equal(positions, np.arange(12))
    np.testing.assert_allclose(times, np.arange(12) / 10)


def test_window_and_windower_reject_bad_input():
    with pytest.raises(ValueError, match="hop"):
        VideoWindower(window=4, hop=5, frame_rate=25.0)
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        VideoWindow(torch.zeros(3, 8, 8))
    windower = VideoWindower(window=4, hop=4, frame_rate=25.0)
    windower.push(VideoFrame(torch.zeros(1, 8, 8), 0.0, 0))
    with pytest.raises(ValueError, match="frame shape changed"):
        windower.push(VideoFrame(torch.zeros(1, 8, 6), 0.04, 1))


# ---------------------------------------------------------------------- the learner


def test_every_module_learns_from_memory_negatives_and_reports_per_frame_embeddings():
    config = small_config()
    learner = VideoLearner(config)
    reports = learn(learner, scene_stream(config), passes=2)
    first, last = reports[0], reports[-1]
    assert first.window_length == 16 and first.window_start == 0 and first.rate == 25.0  # positions count frames
    assert [tuple(e.shape) for e in first.embeddings] == [(16, 8), (16, 16), (16, 16), (16, 32)]
    # the first windows have no frame farther than exclusion_frames in memory: nothing to contrast
    assert not any(m.updated for m in first.modules)
    assert all(m.updated and math.isfinite(m.loss) for m in last.modules)
    assert all(len(memory) == config.memory.capacity == 256 for memory in learner.memories)  # full, bounded
    updated = np.array([[m.updated for m in r.modules] for r in reports])
    assert updated[len(reports) // 4 :].all()
    # negatives never come from the anchor's neighbourhood: the memory's exclusion is in frames
    assert learner.memories[0].exclusion_samples == config.exclusion_frames == 32
    assert last.real_time_factor == pytest.approx(last.seconds / (16 / 25))


def test_modules_argument_and_round_robin_schedule_update_one_module_at_a_time():
    config = small_config(schedule="round_robin")
    learner = VideoLearner(config)
    reports = learn(learner, scene_stream(config))
    learning = [r for r in reports if any(m.updated for m in r.modules)]
    assert learning and all(sum(m.updated for m in r.modules) == 1 for r in learning)
    before = [p.clone() for p in learner.stages[1].module.parameters()]
    frames = scene_stream(config)[:16]
    report = learner.step(VideoWindow(torch.stack([f.image for f in frames]), start_frame=10_000), modules=[0])
    assert [m.updated for m in report.modules] == [True, False, False, False]
    assert all(torch.equal(a, b) for a, b in zip(before, learner.stages[1].module.parameters()))
    with pytest.raises(ValueError, match="modules must be in 0..3"):
        learner.step(VideoWindow(torch.stack([f.image for f in frames])), modules=[4])


def test_nan_frames_are_skipped_and_leave_weights_finite_and_unchanged():
    config = small_config()
    learner = VideoLearner(config)
    learn(learner, scene_stream(config))
    weights = [p.clone() for stage in learner.stages for p in [*stage.module.parameters(), *stage.head.parameters()]]
    memory_sizes = [len(m) for m in learner.memories]
    frames = torch.rand(16, 1, 24, 32)
    frames[3, 0, 5, 5] = float("nan")
    frames[7, 0, 0, 0] = float("inf")
    report = learner.step(VideoWindow(frames, start_frame=50_000))
    assert report.skipped_nonfinite and report.modules == () and learner.windows_skipped_nonfinite == 1
    after = [p for stage in learner.stages for p in [*stage.module.parameters(), *stage.head.parameters()]]
    assert all(torch.equal(a, b) and torch.isfinite(b).all() for a, b in zip(weights, after))
    assert [len(m) for m in learner.memories] == memory_sizes
    with pytest.raises(ValueError, match="NaN"):
        learner.embed(frames)


def test_wrong_frame_shapes_are_refused():
    learner = VideoLearner(small_config())
    with pytest.raises(ValueError, match=r"frames must be \(T, 1, 24, 32\)"):
        learner.step(VideoWindow(torch.rand(16, 3, 24, 32)))
    with pytest.raises(ValueError, match=r"frames must be \(T, 1, 24, 32\)"):
        learner.embed(torch.rand(4, 1, 48, 64))


def test_state_dict_round_trip_continues_identically():
    config = small_config()
    frames = scene_stream(config)
    first = VideoLearner(config)
    learn(first, frames[:200])
    second = VideoLearner(config)
    # a copy, as a checkpoint on disk is: Adam's load_state_dict keeps the given tensors, which
    # would otherwise be the first learner's live moment estimates
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    a, b = learn(first, frames[200:]), learn(second, frames[200:])
    losses = [np.array([[m.loss for m in r.modules] for r in reports]) for reports in (a, b)]
    assert np.isfinite(losses[0]).any() and np.array_equal(losses[0], losses[1], equal_nan=True)
    for s1, s2 in zip(first.stages, second.stages):
        assert all(torch.equal(p1, p2) for p1, p2 in zip(s1.module.parameters(), s2.module.parameters()))
    for d1, d2 in zip(first.decorrelations, second.decorrelations):
        assert bool(d1.initialised) and torch.equal(d1.covariance, d2.covariance)
    with pytest.raises(ValueError, match="different config"):
        VideoLearner(small_config(seed=1)).load_state_dict(first.state_dict())


def test_decorrelation_penalty_counts_shared_channels_and_its_gradient_pulls_them_apart():
    torch.manual_seed(0)
    shared = torch.randn(64, 1).expand(64, 4).clone()
    assert EncodingDecorrelation(4, momentum=0.5).penalty(shared).item() == pytest.approx(3.0, abs=1e-4)  # C - 1
    assert EncodingDecorrelation(4, momentum=0.5).penalty(torch.randn(4096, 4)).item() < 0.01
    # the first window sets the running covariance, later ones are folded in with the momentum
    term = EncodingDecorrelation(4, momentum=0.5)
    first, second = torch.randn(32, 4), torch.randn(32, 4) * 2
    term.penalty(first)
    before = term.covariance.clone()
    term.penalty(second)
    centred = second - second.mean(dim=0)
    assert torch.allclose(term.covariance, 0.5 * before + 0.5 * centred.T @ centred / 32, atol=1e-5)
    # a window's gradient lowers the penalty; a non-finite window leaves the statistics as they were
    correlated = (torch.randn(16, 1) + 0.3 * torch.randn(16, 4)).requires_grad_(True)
    penalty = EncodingDecorrelation(4, momentum=1.0).penalty(correlated)
    penalty.backward()
    stepped = (correlated - 0.05 * correlated.grad).detach()
    assert EncodingDecorrelation(4, momentum=1.0).penalty(stepped) < penalty
    kept = term.covariance.clone()
    assert not torch.isfinite(term.penalty(torch.full((16, 4), float("nan"))))
    assert torch.equal(term.covariance, kept)


def test_config_presets_override_the_video_defaults_field_by_field(tmp_path):
    path = tmp_path / "video.yaml"
    path.write_text("window_frames: 10\nloss: {kind: clapp_s}\n")
    config = load_video_config(path)
    assert config.loss.kind == "clapp_s" and config.loss.prediction_steps == 4  # the video default, not the audio 12
    assert config.hop == 6
    with pytest.raises(ValueError, match="window_frames=4 must exceed prediction_steps=4"):
        VideoLearnerConfig(window_frames=4)
    with pytest.raises(ValueError, match="no pixels after video module"):
        VideoLearnerConfig(height=8, width=8)


def test_module_schedule_is_the_audio_learners():
    schedule = ModuleSchedule("round_robin", 3, np.random.default_rng(0))
    assert [schedule.choose() for _ in range(4)] == [{0}, {1}, {2}, {0}]
    assert schedule.choose([2, 1]) == {1, 2} and schedule.round_robin == 4


# ---------------------------------------------------------------------- retrieval check


def test_retrieval_functions_score_hits_chance_and_exclusions():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])
    allowed = torch.tensor([[False, True, True], [True, True, True]])
    assert nearest_neighbours(queries, gallery).tolist() == [2, 1]
    assert nearest_neighbours(queries, gallery, allowed=allowed).tolist() == [2, 1]
    result = same_scene_retrieval(queries, np.array([0, 1]), gallery, np.array([1, 1, 0]))
    assert result.hit_rate == 1.0 and result.chance == pytest.approx((1 / 3 + 2 / 3) / 2) and result.queries == 2
    # temporal: frames 0..9 at 1 s, encodings that drift with time; the query's own second is excluded
    encodings = torch.stack([torch.tensor([math.cos(t / 5), math.sin(t / 5)]) for t in range(10)])
    result = temporal_retrieval(encodings, np.arange(10.0), np.array([4]), exclude_within=0.5, hit_within=1.0)
    assert result.hit_rate == 1.0 and result.chance == pytest.approx(2 / 9)


@pytest.mark.slow
def test_retrieval_on_a_generated_multiscene_video_learned_and_random(tmp_path):
    """The check itself on a PyAV-encoded video of 12 scenes: held-out views of the scenes (another
    camera path) retrieve frames of the learned rendering; both encoders must be far above chance
    (the check can tell scenes apart), and the learned one is measured (see the xfail below)."""
    config = small_config()
    video = write_scene_video(tmp_path / "scenes.mp4", scenes=12, seconds_per_scene=2.0, size=(48, 64))
    frames = list(VideoFrameSource(video.path, size=(24, 32), gray=True))
    assert len(frames) == video.num_frames == 600
    labels = video.scene_labels()
    held_out = render_scenes(scenes=12, seconds_per_scene=2.0, size=(24, 32), gray=True, camera_seed=1)
    random_init, learned = VideoLearner(config), VideoLearner(config)
    learn(random_init, frames, modules=[])  # input and norm statistics only: no weight changes
    learn(learned, frames, passes=3)
    gallery = torch.stack([f.image for f in frames])
    scores = {}
    for name, learner in (("random", random_init), ("learned", learned)):
        result = same_scene_retrieval(learner.embed(held_out)[-1], labels, learner.embed(gallery)[-1], labels)
        scores[name] = result
    assert scores["random"].chance == pytest.approx(1 / 12)
    assert scores["random"].hit_rate > 0.5 and scores["learned"].hit_rate > 0.5


@pytest.mark.slow
def test_learned_encoder_beats_random_init_on_held_out_scene_views():
    # 36 scenes: with 12, random init retrieves 0.92-0.95 and one frame decides the comparison
    scenes = 36
    config = small_config()
    frames = scene_stream(config, scenes=scenes)
    labels = np.repeat(np.arange(scenes), 50)
    held_out = render_scenes(scenes=scenes, seconds_per_scene=2.0, size=(24, 32), gray=True, camera_seed=1)
    random_init, learned = VideoLearner(config), VideoLearner(config)
    learn(random_init, frames, modules=[])
    learn(learned, frames, passes=3)
    gallery = torch.stack([f.image for f in frames])
    rates = [
        same_scene_retrieval(l.embed(held_out)[-1], labels, l.embed(gallery)[-1], labels).hit_rate
        for l in (random_init, learned)
    ]
    assert rates[1] > rates[0] + 0.02, rates


# ---------------------------------------------------------------------- one decoder for audio and video


@needs_clip
def test_av_source_decodes_the_clip_once_into_audio_chunks_and_frames():
    source = AVSource(CLIP, speed=None, size=(24, 32), gray=True, frame_buffer=4)
    frames: list[VideoFrame] = []
    reader = threading.Thread(target=lambda: frames.extend(source.frames))
    reader.start()
    audio = np.concatenate([chunk.samples for chunk in source])
    reader.join(timeout=30)
    reference_audio = np.concatenate([chunk.samples for chunk in FileSource(CLIP, speed=None)])
    reference_frames = list(VideoFrameSource(CLIP, size=(24, 32), gray=True))
    np.testing.assert_array_equal(audio, reference_audio)
    assert len(frames) == len(reference_frames) == 132
    assert [f.pts for f in frames] == [f.pts for f in reference_frames]
    assert all(torch.equal(a.image, b.image) for a, b in zip(frames, reference_frames))
    assert source.source_id == "av:big_buck_bunny_small.mp4" and source.frame_rate == 25.0


def test_av_source_needs_a_video_track(tmp_path):
    import soundfile

    path = tmp_path / "tone.wav"
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16_000)
    with pytest.raises(VideoFileError, match="no video track"):
        AVSource(path)


# ---------------------------------------------------------------------- online-gim listen


@needs_clip
@pytest.mark.slow
def test_listen_video_at_max_speed_learns_all_132_frames(tmp_path):
    result = listen("--source", "video", "--path", str(CLIP), "--speed", "max", "--summary-json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["stop_reason"] == "end_of_stream" and summary["frames_processed"] == 132
    assert summary["video_windows_processed"] == 11  # 16-frame windows 12 apart, and the tail
    assert summary["video_fps_learn"] == pytest.approx(132 / summary["video_compute_seconds"])
    assert summary["video_fps_learn"] > 0 and summary["video_windows_skipped_nonfinite"] == 0
    assert len(summary["video_final_loss"]) == 6


@needs_clip
@pytest.mark.slow
def test_listen_video_loss_falls_over_repeated_passes(tmp_path, small_video_yaml):
    def final_loss(windows: int) -> float:
        path = tmp_path / f"{windows}.json"
        result = listen(
            "--source", "video", "--path", str(CLIP), "--speed", "max", "--loop", "--video-config", str(small_video_yaml),
            "--max-windows", str(windows), "--summary-json", str(path),
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads(path.read_text())
        assert summary["stop_reason"] == "max_windows" and summary["video_windows_processed"] == windows
        return float(np.mean(list(summary["video_final_loss"].values())))

    one_pass, ten_passes = final_loss(11), final_loss(110)  # same seed: the first run is the second's start
    assert ten_passes < 0.7 * one_pass


@needs_clip
@pytest.mark.slow
def test_listen_av_runs_the_audio_and_the_video_learner_from_one_decoder(tmp_path, small_config, small_video_yaml):
    result = listen(
        "--source", "av", "--path", str(CLIP), "--speed", "max", "--config", str(small_config),
        "--video-config", str(small_video_yaml), "--summary-json", str(tmp_path / "s.json"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    audio = np.concatenate([chunk.samples for chunk in FileSource(CLIP, speed=None)])
    assert summary["source"] == "av:big_buck_bunny_small.mp4" and summary["stop_reason"] == "end_of_stream"
    assert summary["samples_in"] == audio.shape[0] and summary["windows_processed"] >= 4
    assert summary["video_stop_reason"] == "end_of_stream" and summary["frames_processed"] == 132
    assert summary["video_fps_learn"] > 0
    assert any(v is not None for v in summary["final_loss"].values())  # the audio learner updated
    assert all(v is not None for v in summary["video_final_loss"].values())  # so did every video module


@needs_clip
@pytest.mark.slow
def test_a_signal_stops_both_learners_of_av_cleanly_at_real_time_pace(tmp_path, small_config, small_video_yaml):
    process = subprocess.Popen(
        [*LISTEN, "--no-http", "--quiet", "--source", "av", "--path", str(CLIP), "--loop", "--config", str(small_config),
         "--video-config", str(small_video_yaml), "--summary-json", str(tmp_path / "s.json")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    summary_path = tmp_path / "s.json"
    time.sleep(scaled(6))  # start-up, then a few seconds of the file at 1x
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=scaled(60))
    assert process.returncode == 0, stderr
    summary = json.loads(summary_path.read_text())
    assert summary["stop_reason"] == summary["video_stop_reason"] == "signal:SIGINT"
    # paced at real time: the video learner saw about as much of the file as the audio one, no more
    assert 0 < summary["frames_processed"] / 25 <= summary["seconds_of_audio"] + 1.0


def test_listen_video_learns_from_a_camera_device(tmp_path, small_video_yaml):
    # FFmpeg's lavfi input is a virtual capture device: the same path as --camera /dev/video0 (v4l2)
    result = listen(
        "--source", "video", "--camera", "testsrc=size=64x48:rate=30", "--camera-format", "lavfi",
        "--camera-option", "fflags=nobuffer", "--video-config", str(small_video_yaml), "--max-windows", "5",
        "--summary-json", str(tmp_path / "s.json"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["source"] == "video:testsrc=size=64x48:rate=30" and summary["stop_reason"] == "max_windows"
    assert summary["video_frame_rate"] == 30.0 and summary["video_windows_processed"] == 5
    assert summary["frames_processed"] == 16 + 4 * 12  # first window, then a hop of 12 new frames per window


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--source", "video", "--camera", "/dev/video99"), "cannot open '/dev/video99' as video"),
        (("--source", "video", "--camera", "testsrc", "--path", "clip.mp4"), "give one"),
        (("--source", "av", "--camera", "testsrc"), "use it with --source video"),
        (("--source", "video", "--camera", "testsrc", "--loop"), "no end to start over from"),
        (("--source", "video", "--camera", "testsrc", "--camera-format", "lavfi", "--camera-option", "rate"), "KEY=VALUE"),
    ],
)
def test_camera_errors_are_one_sentence(args, message):
    result = listen(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_listen_video_errors_are_one_sentence(tmp_path):
    result = listen("--source", "video")
    assert result.returncode == 2 and "--source video needs --path" in result.stderr
    result = listen("--source", "video", "--path", str(tmp_path / "missing.mp4"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------- benchmark


def test_measure_video_fps_learn_times_updating_windows():
    fps = measure_video_fps_learn(small_config(), windows=3, warmup=5)
    assert math.isfinite(fps) and fps > 1.0
