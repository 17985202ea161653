"""End to end: ``online-gim listen --source synth --http 127.0.0.1:<port>`` as a real process,
every endpoint over real HTTP while it learns."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest

from machine_speed import scaled
from service_support import metric_values
from online_gim.services.loadcheck import LISTEN as ONLINE_GIM
from online_gim.services.loadcheck import free_port, stop_listen, wait_ready

LISTEN = [*ONLINE_GIM, "listen"]

pytestmark = pytest.mark.slow


def get(url: str) -> httpx.Response:
    """A GET whose timeout allows for this machine's speed (the learner and the server share it)."""
    return httpx.get(url, timeout=scaled(10))


@pytest.fixture(scope="module")
def listening():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*LISTEN, "--source", "synth", "--http", f"127.0.0.1:{port}", "--duration", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        wait_ready(url, process, timeout=scaled(240))
        yield url, process
    finally:
        stop_listen(process)


def wait_windows(url: str, count: int, timeout: float = 120) -> dict:
    """The status once ``count`` windows are processed (``timeout``: seconds on the idle reference machine)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get(url + "/v1/status").json()
        if status["windows_processed"] >= count:
            return status
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} windows in {timeout} s")


def test_every_endpoint_of_a_listening_process(listening):
    url, process = listening
    assert get(url + "/healthz").json()["status"] == "ok"
    # ready again after the next window (a busy machine may stall the learner past the 15 s limit
    # between two requests: readiness then rightly fails until a window is processed)
    wait_ready(url, process, timeout=scaled(60))
    status = wait_windows(url, 3)
    assert status["source"].startswith("synth") and status["model_step"] >= 1
    modules = status["modules"]
    assert len(modules) >= 2 and all(m["loss"] is not None for m in modules)

    for m in modules:
        body = get(url + f"/v1/embeddings/latest?module={m['module']}&frames=5").json()
        assert body["channels"] == m["channels"] and body["window_frames"] == m["frames"]
        assert len(body["values"]) == 5 and all(len(row) == m["channels"] for row in body["values"])
        assert body["times"] == sorted(body["times"])
    top = get(url + "/v1/embeddings/latest").json()
    assert top["module"] == len(modules) - 1 and top["hop_seconds"] == pytest.approx(0.01)

    probes = get(url + "/v1/probes/latest")
    assert probes.status_code == 200, probes.text
    probes = probes.json()
    assert len(probes["frames"]) == 128 and probes["frames"][0]["phone_name"]
    assert any(f["label"] is not None for f in probes["frames"])  # the synthetic corpus has labels
    assert probes["true_speaker"] is not None and probes["speakers"]

    hits = httpx.post(url + "/v1/neighbors", json={"k": 3}, timeout=scaled(10))
    assert hits.status_code == 200, hits.text
    assert len(hits.json()["neighbors"]) == 3 and hits.json()["neighbors"][0]["stream_seconds"] is not None

    history = get(url + "/v1/history").json()
    assert len(history["points"]) >= 3
    proj = get(url + "/v1/projection").json()
    assert len(proj["points"]) >= 16 and proj["speakers"]
    page = get(url + "/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "/v1/neighbors" in get(url + "/openapi.json").json()["paths"]
    assert get(url + "/v1/embeddings/latest?module=40").status_code == 404
    assert get(url + "/v1/embeddings/latest?frames=-3").status_code == 422


def test_metrics_change_while_it_learns(listening):
    url, _ = listening
    wait_windows(url, 2)
    first = metric_values(get(url + "/metrics").text)
    status = get(url + "/v1/status").json()
    wait_windows(url, status["windows_processed"] + 3)
    second = metric_values(get(url + "/metrics").text)
    names = {n for n, _ in second}
    for required in ("online_gim_module_loss", "online_gim_real_time_factor", "online_gim_windows_processed_total",
                     "online_gim_samples_in_total", "online_gim_memory_vectors",
                     "online_gim_module_dead_unit_ratio", "online_gim_module_loss_chance_ratio",
                     "online_gim_update_duration_seconds_count", "online_gim_input_level_dbfs"):
        assert required in names, required
    assert "online_gim_probe_accuracy_ratio" in names
    assert not [n for n in names if n.endswith("_created")]
    key = ("online_gim_windows_processed_total", ())
    assert second[key] >= first[key] + 3
    assert second[("online_gim_samples_in_total", ())] > first[("online_gim_samples_in_total", ())]
    losses = lambda v: {k: x for k, x in v.items() if k[0] == "online_gim_module_loss"}  # noqa: E731
    assert losses(second) != losses(first)


def test_stream_delivers_events(listening):
    url, _ = listening
    events = []
    with httpx.stream("GET", url + "/v1/stream", timeout=scaled(60)) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if len(events) == 3:
                    break
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
    assert events[-1]["seq"] - events[0]["seq"] >= 2
    assert len(events[-1]["loss"]) >= 2 and events[-1]["rtf"] > 0


def test_non_loopback_without_token_refuses_to_start():
    result = subprocess.run(
        [*LISTEN, "--source", "synth", "--http", "0.0.0.0:0", "--duration", "5"],
        capture_output=True, text=True, timeout=scaled(120), env={k: v for k, v in os.environ.items() if k != "ONLINE_GIM_TOKEN"},
    )
    assert result.returncode != 0
    assert "not a loopback address" in result.stderr and "Traceback" not in result.stderr
