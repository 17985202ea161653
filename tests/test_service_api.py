"""The side service's HTTP API, over real HTTP against a real uvicorn server on a loopback port,
fed by a real LiveBoard with hand-made step reports (the listen command's end-to-end test is
tests/test_service_e2e.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_support import SHAPES, FakeStream, StoppedClock, make_board, running_service
from online_gim.services.http import ServiceConfigError, is_loopback, parse_host_port, serve_in_thread


@pytest.fixture(scope="module")
def service():
    with running_service(windows=6) as (handle, stream):
        yield handle, stream


def get(handle, path, **kwargs):
    return httpx.get(handle.url + path, timeout=10, **kwargs)


def test_health_and_readiness(service):
    handle, _ = service
    assert get(handle, "/healthz").json()["status"] == "ok"
    ready = get(handle, "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_status_reports_stream_learner_and_config(service):
    handle, stream = service
    s = get(handle, "/v1/status").json()
    assert s["source"] == "fake" and s["source_id"] == "fake"
    assert s["windows_processed"] == stream.step and s["model_step"] == stream.step
    assert s["samples_in"] == stream.step * 20480 and s["samples_dropped"] == 0
    assert s["stream_seconds"] == pytest.approx(stream.step * 1.28)
    assert 0 < s["real_time_factor"] < 1
    assert [m["module"] for m in s["modules"]] == list(range(len(SHAPES)))
    assert [(m["frames"], m["channels"]) for m in s["modules"]] == list(SHAPES)
    assert all(m["loss"] is not None and m["memory_vectors"] > 0 for m in s["modules"])
    assert s["config"] == {"loss": "clapp", "modules": len(SHAPES)}


@pytest.mark.parametrize("module", range(len(SHAPES)))
def test_embeddings_latest_shapes_and_times(service, module):
    handle, stream = service
    body = get(handle, f"/v1/embeddings/latest?module={module}&frames=7").json()
    frames, channels = SHAPES[module]
    assert body["module"] == module and body["channels"] == channels and body["window_frames"] == frames
    assert body["frames"] == 7 and len(body["values"]) == 7 and all(len(row) == channels for row in body["values"])
    hop = 20480 / frames
    assert body["hop_seconds"] == pytest.approx(round(hop) / 16000)
    start = (stream.step - 1) * 1.28
    assert body["window_start_seconds"] == pytest.approx(start)
    assert body["times"][-1] == pytest.approx(start + (frames - 1) * round(hop) / 16000)
    assert body["model_step"] == stream.step


def test_embeddings_default_is_top_module_and_frames_are_capped(service):
    handle, _ = service
    body = get(handle, "/v1/embeddings/latest").json()
    assert body["module"] == len(SHAPES) - 1 and body["frames"] == 16
    body = get(handle, "/v1/embeddings/latest?module=5&frames=256").json()
    assert body["frames"] == 128  # the whole window


def test_probes_latest(service):
    handle, _ = service
    body = get(handle, "/v1/probes/latest").json()
    assert len(body["frames"]) == 128
    first = body["frames"][1]
    assert first["phone"] == 0 and first["phone_name"] == "sil" and first["label"] == 1 and first["label_name"] == "p1"
    assert [s["speaker"] for s in body["speakers"]] == ["spk0", "spk1", "spk2"]
    assert body["true_speaker"] in {"spk0", "spk1", "spk2"}
    assert 0 < body["phone_accuracy"] <= 1 and 0 < body["speaker_accuracy"] <= 1


def test_neighbors_of_latest_and_of_given_embedding(service):
    handle, _ = service
    r = httpx.post(handle.url + "/v1/neighbors", json={"module": 2, "k": 4}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["module"] == 2 and body["query"].startswith("latest frame") and len(body["neighbors"]) == 4
    hit = body["neighbors"][0]
    assert hit["source_id"] == "fake" and hit["speaker"] == "spk0" and hit["stream_seconds"] >= 0
    scores = [h["score"] for h in body["neighbors"]]
    assert scores == sorted(scores, reverse=True)
    r = httpx.post(handle.url + "/v1/neighbors", json={"module": 5, "k": 2, "embedding": [0.5] * 256}, timeout=10)
    assert r.status_code == 200 and r.json()["query"] == "request" and len(r.json()["neighbors"]) == 2
    assert httpx.post(handle.url + "/v1/neighbors", timeout=10).status_code == 200  # no body: the latest frame


def test_history_projection_drift(service):
    handle, stream = service
    history = get(handle, "/v1/history").json()
    assert history["modules"] == len(SHAPES) and len(history["points"]) == stream.step
    assert [p["seq"] for p in history["points"]] == list(range(1, stream.step + 1))
    assert get(handle, "/v1/history?limit=2").json()["points"][-1]["seq"] == stream.step
    proj = get(handle, "/v1/projection?module=4&points=50").json()
    assert proj["module"] == 4 and len(proj["points"]) == 50
    assert set(proj["speakers"]) <= {"spk0", "spk1", "spk2"} and len(proj["speakers"]) >= 2
    assert 0 < proj["explained_variance"][0] <= 1
    drift = get(handle, "/v1/drift").json()
    assert set(drift["embedding_mmd"]) == {str(m) for m in range(len(SHAPES))}
    assert drift["reference_stop"] == pytest.approx(2.56)
    assert drift["input_level_db"] < 0 and drift["input_centroid_hz"] > 0
    assert all(v is not None and v > 0 for v in drift["weight_change"].values())


def test_metrics_and_dashboard_and_docs(service):
    handle, _ = service
    r = get(handle, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "online_gim_windows_processed_total" in r.text
    page = get(handle, "/")
    assert page.status_code == 200 and "<canvas" in page.text and "EventSource" in page.text
    assert get(handle, "/docs").status_code == 200
    schema = get(handle, "/openapi.json").json()
    for path in ("/healthz", "/readyz", "/v1/status", "/v1/embeddings/latest", "/v1/probes/latest",
                 "/v1/stream", "/v1/neighbors", "/metrics", "/"):
        assert path in schema["paths"], path


def read_events(url: str, count: int, timeout: float = 10.0, headers: dict | None = None) -> list[dict]:
    events: list[dict] = []
    with httpx.stream("GET", url, timeout=timeout, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name == "step":
                events.append(json.loads(line.split(":", 1)[1]))
                if len(events) >= count:
                    break
    return events


def test_stream_delivers_one_event_per_window():
    with running_service(windows=2, feed_period=0.05) as (handle, _):
        events = read_events(handle.url + "/v1/stream", 6)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert seqs[-1] - seqs[1] == 4  # after the first (current) event, consecutive windows
    e = events[-1]
    assert len(e["loss"]) == len(SHAPES) and e["rtf"] > 0 and e["phones"][0] == "sil"
    assert e["speakers"][0] == ["spk0", 0.6]


def test_stream_ends_when_server_stops():
    board = make_board()
    from service_support import FakeStream

    FakeStream(board).feed(1)
    handle = serve_in_thread(board, "127.0.0.1", 0, None)
    got: list[str] = []

    def client() -> None:
        with httpx.stream("GET", handle.url + "/v1/stream", timeout=10) as response:
            for line in response.iter_lines():
                got.append(line)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    handle.stop()
    board.close()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert any(line.startswith("data:") for line in got)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/embeddings/latest?module=-1",
        "/v1/embeddings/latest?module=99",
        "/v1/embeddings/latest?module=6",
        "/v1/embeddings/latest?frames=0",
        "/v1/embeddings/latest?frames=100000",
        "/v1/embeddings/latest?module=abc",
        "/v1/projection?points=1",
        "/v1/history?limit=0",
        "/v1/nothing-here",
    ],
)
def test_invalid_parameters_get_4xx_with_a_message(service, path):
    handle, _ = service
    r = get(handle, path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"k": 0}, {"k": 1000}, {"module": -2}, {"module": 40}, {"embedding": []}, {"embedding": [1.0, 2.0]},
        {"embedding": "text"}, {"frame": 100000}, {"unknown": 1}, [1, 2], "null-ish",
    ],
)
def test_invalid_neighbor_requests_get_4xx(service, body):
    handle, _ = service
    r = httpx.post(handle.url + "/v1/neighbors", json=body, timeout=10)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert r.json()["detail"]


def test_non_finite_and_oversized_bodies_are_refused(service):
    handle, _ = service
    r = httpx.post(handle.url + "/v1/neighbors", content=b'{"embedding": [NaN, 1.0]}',
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422
    r = httpx.post(handle.url + "/v1/neighbors", content=b"[" + b"1.0," * 400_000 + b"1.0]",
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413


def test_readiness_fails_after_a_stall_and_when_the_source_closes_and_recovers_with_the_next_window():
    clock = StoppedClock()
    board = make_board(clock=clock, stall_seconds=15.0)
    handle = serve_in_thread(board, "127.0.0.1", 0, None)
    try:
        stream = FakeStream(board)
        stream.feed(1)
        assert get(handle, "/readyz").json() == {"ready": True, "reason": "source open and learner stepping"}
        clock.now += 15.5
        stalled = get(handle, "/readyz")
        assert stalled.status_code == 503 and stalled.json()["reason"] == "no window processed for 15.5 s"
        stream.feed(1)
        assert get(handle, "/readyz").status_code == 200
        board.set_source_state(open=False)
        assert get(handle, "/readyz").json() == {"ready": False, "reason": "the source is not open"}
    finally:
        handle.stop()
        board.close()
    assert board.readiness() == (False, "the board is closed (the stream has ended)")


def test_before_the_first_window_endpoints_answer_4xx_not_5xx():
    board = make_board()
    handle = serve_in_thread(board, "127.0.0.1", 0, None)
    try:
        assert get(handle, "/healthz").status_code == 200
        assert get(handle, "/readyz").status_code == 503
        status = get(handle, "/v1/status").json()
        assert status["windows_processed"] == 0 and status["modules"] == []
        for path in ("/v1/embeddings/latest", "/v1/probes/latest", "/v1/projection", "/v1/drift"):
            assert get(handle, path).status_code == 404, path
        assert get(handle, "/v1/history").json()["points"] == []
        assert httpx.post(handle.url + "/v1/neighbors", json={}, timeout=10).status_code == 404
        assert get(handle, "/metrics").status_code == 200
    finally:
        handle.stop()
        board.close()


def test_token_guards_every_path_but_healthz():
    with running_service(windows=2, token="s3cret") as (handle, _):
        assert get(handle, "/healthz").status_code == 200
        for path in ("/readyz", "/v1/status", "/metrics", "/", "/docs", "/openapi.json", "/v1/stream", "/nowhere"):
            r = get(handle, path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert get(handle, "/v1/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert get(handle, "/v1/status?token=wrong").status_code == 401
        assert httpx.post(handle.url + "/v1/neighbors", json={}).status_code == 401
        assert get(handle, "/v1/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert get(handle, "/metrics?token=s3cret").status_code == 200
        assert "openapi.json?token=s3cret" in get(handle, "/docs?token=s3cret").text
        events = read_events(handle.url + "/v1/stream?token=s3cret", 1)
        assert events and events[0]["seq"] == 2


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_non_loopback_bind_without_token_refuses_to_start(host):
    board = make_board()
    try:
        with pytest.raises(ServiceConfigError, match="not a loopback address.*--token"):
            serve_in_thread(board, host, 0, None)
    finally:
        board.close()


def test_non_loopback_bind_with_token_starts():
    board = make_board()
    handle = serve_in_thread(board, "0.0.0.0", 0, "tok")
    try:
        assert httpx.get(f"http://127.0.0.1:{handle.port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{handle.port}/v1/status", timeout=5).status_code == 401
    finally:
        handle.stop()
        board.close()


def test_address_parsing_and_loopback_detection():
    assert parse_host_port("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_host_port("[::1]:0") == ("::1", 0)
    for bad in ("8000", "host:", "host:99999", ":80", "a:b"):
        with pytest.raises(ServiceConfigError):
            parse_host_port(bad)
    assert is_loopback("localhost") and is_loopback("127.0.0.5") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("myhost")


def test_port_in_use_is_a_clear_error(service):
    handle, _ = service
    board = make_board()
    try:
        with pytest.raises(ServiceConfigError, match="cannot listen on 127.0.0.1"):
            serve_in_thread(board, "127.0.0.1", handle.port, None)
    finally:
        board.close()


# ---- fuzzing: hypothesis-generated requests from /openapi.json, bounded to ~100 requests -------

# JSON has no Infinity/NaN: non-finite bodies are tested by test_non_finite_and_oversized_bodies_are_refused
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
_param_values = st.one_of(
    st.integers(-(10**9), 10**9).map(str), st.text(max_size=30), st.sampled_from(["", "-1", "1e3", "NaN", "0x10", "5"])
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(data=st.data())
def test_fuzzed_requests_never_get_5xx(service, data):
    handle, _ = service
    schema = _schema(handle)
    path = data.draw(st.sampled_from(sorted(p for p in schema["paths"] if p != "/v1/stream")))
    methods = schema["paths"][path]
    method = data.draw(st.sampled_from(sorted(methods)))
    params = {}
    for parameter in methods[method].get("parameters", []):
        if data.draw(st.booleans()):
            params[parameter["name"]] = data.draw(_param_values)
    if method == "post":
        if data.draw(st.booleans()):
            body = data.draw(st.fixed_dictionaries({}, optional={
                "module": st.integers(-5, 70) | _json_values, "k": st.integers(-5, 200) | _json_values,
                "frame": st.integers(-300, 300) | _json_values,
                "embedding": st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=600) | _json_values,
            }))
        else:
            body = data.draw(_json_values)
        r = httpx.post(handle.url + path, params=params, json=body, timeout=10)
    else:
        r = httpx.request(method.upper(), handle.url + path, params=params, timeout=10)
    assert r.status_code < 500, (method, path, params, r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("application/json"):
        json.loads(r.text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {path}"))


_SCHEMA: dict = {}


def _schema(handle) -> dict:
    if handle.url not in _SCHEMA:
        _SCHEMA[handle.url] = get(handle, "/openapi.json").json()
    return _SCHEMA[handle.url]


def test_listen_options_fail_early_with_one_sentence(monkeypatch):
    import argparse

    from online_gim.services.cli import CliError
    from online_gim.services.cli import service_options

    parser = argparse.ArgumentParser()
    service_options.add_arguments(parser)
    monkeypatch.delenv("ONLINE_GIM_TOKEN", raising=False)
    service_options.from_args(parser.parse_args([]))  # the default, 127.0.0.1:8000
    service_options.from_args(parser.parse_args(["--http", "0.0.0.0:8000", "--no-http"]))
    service_options.from_args(parser.parse_args(["--http", "0.0.0.0:8000", "--token", "t"]))
    with pytest.raises(CliError, match="not a loopback address"):
        service_options.from_args(parser.parse_args(["--http", "0.0.0.0:8000"]))
    with pytest.raises(CliError, match="HOST:PORT"):
        service_options.from_args(parser.parse_args(["--http", "8000"]))
    monkeypatch.setenv("ONLINE_GIM_TOKEN", "from-env")
    service_options.from_args(parser.parse_args(["--http", "0.0.0.0:8000"]))
    board = make_board()
    handle = service_options.start(service_options.from_args(parser.parse_args(["--http", "127.0.0.1:0"])), board)
    try:
        assert get(handle, "/v1/status").status_code == 401
        assert get(handle, "/v1/status?token=from-env").status_code == 200
    finally:
        handle.stop()
        board.close()
    assert service_options.from_args(parser.parse_args(["--no-http"])) is None
