"""The video learner in the side service: ``/v1/embeddings/latest?stream=video`` and the
``online_gim_video_*`` metrics, fed by a real VideoLearner through a real LiveBoard and served over
real HTTP; and end to end by ``online-gim listen --source av`` as a real process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

from service_support import make_board, metric_values
from online_gim.video import VideoLearner, VideoLearnerConfig
from online_gim.video.scenes import render_scenes
from online_gim.services.http import serve_in_thread
from online_gim.services.loadcheck import LISTEN as ONLINE_GIM
from online_gim.services.loadcheck import free_port, stop_listen, wait_ready
from online_gim.streams.video_window import VideoWindow

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "big_buck_bunny_small.mp4"
SMALL = VideoLearnerConfig.model_validate(
    {"height": 24, "width": 32, "encoder": {"convs": [{"channels": 8}, {"channels": 16, "pool": 2}]}, "memory": {"capacity": 64}}
)


def windows(count: int, *, frame_rate: float = 25.0) -> list[VideoWindow]:
    frames = render_scenes(scenes=2, seconds_per_scene=2.0, size=(SMALL.height, SMALL.width), gray=True)
    step = SMALL.hop
    return [
        VideoWindow(frames[i * step : i * step + SMALL.window_frames], start_frame=i * step, frame_rate=frame_rate,
                    source_id="video:scenes", new_frames=SMALL.window_frames if i == 0 else step)
        for i in range(count)
    ]


def test_video_embeddings_and_metrics_follow_the_video_learner():
    board = make_board()
    handle = serve_in_thread(board, "127.0.0.1", 0, None)
    url = handle.url + "/v1/embeddings/latest"
    try:
        status = handle.url + "/v1/status"
        no_video = httpx.get(url, params={"stream": "video"}, timeout=10)
        assert no_video.status_code == 404 and "no video stream" in no_video.json()["detail"]
        assert httpx.get(status, timeout=10).json()["video"] is None
        video_board = board.attach_video("video:scenes")
        assert httpx.get(url, params={"stream": "video"}, timeout=10).status_code == 404  # no window yet
        assert httpx.get(status, timeout=10).json()["video"]["windows_processed"] == 0

        learner = VideoLearner(SMALL)
        stream = windows(8, frame_rate=30.0)
        for window in stream:
            report = learner.step(window)
            video_board.on_step(window, report)
        last = stream[-1]
        for module, expected in enumerate(report.embeddings):
            body = httpx.get(url, params={"stream": "video", "module": module, "frames": 5}, timeout=10).json()
            assert body["module"] == module and body["model_step"] == report.updates == learner.updates
            assert body["window_frames"] == last.num_frames and body["frames"] == 5
            assert body["channels"] == SMALL.encoder.convs[module].channels
            assert body["hop_seconds"] == pytest.approx(1 / 30)
            assert body["times"] == pytest.approx([(last.start_frame + t) / 30 for t in range(last.num_frames - 5, last.num_frames)])
            torch.testing.assert_close(torch.tensor(body["values"]), expected[-5:])
        video = httpx.get(status, timeout=10).json()["video"]
        assert video["source_id"] == "video:scenes" and video["windows_processed"] == 8
        assert video["model_step"] == learner.updates and video["window_frames"] == last.num_frames
        assert video["stream_seconds"] == pytest.approx((last.start_frame + last.num_frames) / 30)
        assert [m["module"] for m in video["modules"]] == list(range(len(SMALL.encoder.convs)))
        assert [m["loss"] for m in video["modules"]] == pytest.approx([m.loss for m in report.modules])
        assert [m["channels"] for m in video["modules"]] == [c.channels for c in SMALL.encoder.convs]
        top = httpx.get(url, params={"stream": "video"}, timeout=10).json()
        assert top["module"] == len(SMALL.encoder.convs) - 1
        assert httpx.get(url, params={"stream": "video", "module": 2}, timeout=10).status_code == 404
        assert httpx.get(url, params={"stream": "film"}, timeout=10).status_code == 422
        assert httpx.get(url, timeout=10).status_code == 404  # the audio stream has seen no window

        # a window of NaN pixels: counted as skipped, the last encoded window stays on show
        bad = VideoWindow(torch.full_like(last.frames, float("nan")), start_frame=last.start_frame + SMALL.hop,
                          frame_rate=30.0, source_id="video:scenes", new_frames=SMALL.hop)
        video_board.on_step(bad, learner.step(bad))
        after = httpx.get(url, params={"stream": "video", "frames": 5}, timeout=10).json()
        assert after["window_start_seconds"] == pytest.approx(last.start_frame / 30)

        metrics = metric_values(httpx.get(handle.url + "/metrics", timeout=10).text)
        assert metrics[("online_gim_video_windows_processed_total", ())] == 9
        assert metrics[("online_gim_video_windows_skipped_total", ())] == 1
        assert metrics[("online_gim_video_frames_total", ())] == sum(w.new_frames for w in [*stream, bad])
        assert metrics[("online_gim_video_model_step", ())] == learner.updates > 0
        for module in range(len(SMALL.encoder.convs)):
            assert metrics[("online_gim_video_module_loss", (("module", str(module)),))] > 0
            assert 0 <= metrics[("online_gim_video_module_dead_unit_ratio", (("module", str(module)),))] <= 1
    finally:
        handle.stop()
        board.close()


@pytest.mark.slow
@pytest.mark.skipif(not CLIP.is_file(), reason="../shared/data/video is missing")
def test_listen_av_serves_the_video_learners_embeddings(tmp_path):
    video_config = tmp_path / "video.yaml"
    video_config.write_text("height: 24\nwidth: 32\nencoder:\n  convs: [{channels: 8}, {channels: 16, pool: 2}]\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*ONLINE_GIM, "listen", "--source", "av", "--path", str(CLIP), "--loop", "--video-config", str(video_config),
         "--http", f"127.0.0.1:{port}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        wait_ready(url, process, timeout=240)
        deadline = time.monotonic() + 120
        while True:
            response = httpx.get(url + "/v1/embeddings/latest", params={"stream": "video", "frames": 4}, timeout=10)
            if response.status_code == 200:
                break
            assert response.status_code == 404 and process.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        body = response.json()
        assert body["module"] == 1 and body["channels"] == 16 and body["frames"] == 4
        assert body["hop_seconds"] == pytest.approx(1 / 25)
        metrics = metric_values(httpx.get(url + "/metrics", timeout=10).text)
        assert metrics[("online_gim_video_windows_processed_total", ())] >= 1
        assert metrics[("online_gim_video_frames_total", ())] >= 16
    finally:
        stop_listen(process)
    assert process.returncode == 0
