"""The side service's body limit holds for every transfer encoding (issue 15): a chunked body is cut
off at ``MAX_BODY_BYTES`` with 413 and the rest is never read, so two concurrent 100 MiB uploads
neither grow the listening process nor slow its learner."""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from service_support import running_service
from online_gim.services.loadcheck import LISTEN, free_port, stop_listen, wait_ready

MIB = 1 << 20


def chunked_post(url: str, path: str, total: int, *, chunk: int = 64 * 1024, body: bytes | None = None) -> tuple[int, int]:
    """POSTs ``body`` (or ``total`` bytes of filler) with ``Transfer-Encoding: chunked`` over a raw
    socket, stopping early when the server answers; returns ``(status, bytes sent)``."""
    host, port = url.removeprefix("http://").split(":")
    data = body if body is not None else b"1" * total
    sent = 0
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < len(data) and not select.select([sock], [], [], 0)[0]:  # stop once the server answered
                piece = data[sent : sent + chunk]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if sent == len(data):
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        response = b""
        while b"\r\n" not in response:
            received = sock.recv(4096)
            if not received:
                break
            response += received
    return int(response.split()[1]), sent


def test_a_chunked_body_over_the_limit_is_cut_off_with_413_and_one_under_it_is_served():
    with running_service(windows=4) as (handle, _):
        status, sent = chunked_post(handle.url, "/v1/neighbors", 20 * MIB)
        assert status == 413 and sent < 20 * MIB  # answered before the whole body was sent (kernel buffers hold a few MiB)
        status, _ = chunked_post(handle.url, "/v1/neighbors", 0, body=json.dumps({"k": 3}).encode())
        assert status == 200
        assert httpx.get(handle.url + "/healthz", timeout=10).status_code == 200


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def median_rtf(url: str, start: float, stop: float) -> float:
    """Median real-time factor of the windows learned between two wall-clock times (``/v1/history``)."""
    points = httpx.get(url + "/v1/history?limit=10000", timeout=10).json()["points"]
    values = [p["rtf"] for p in points if start <= p["wall"] <= stop and p["rtf"] is not None]
    assert len(values) >= 5, f"only {len(values)} windows in the interval"
    return statistics.median(values)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the RSS")
def test_two_concurrent_100_mib_chunked_uploads_neither_grow_the_process_nor_slow_the_learner(tmp_path, small_config):
    audio = tmp_path / "noise.wav"
    soundfile.write(audio, 0.1 * np.random.default_rng(0).standard_normal(16_000 * 20).astype(np.float32), 16_000)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*LISTEN, "listen", "--source", "file", "--path", str(audio), "--loop", "--speed", "max",
         "--config", str(small_config), "--http", f"127.0.0.1:{port}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        wait_ready(url, process)
        time.sleep(5)  # the memories fill up, the allocator settles
        interval = 5.0
        before_start = time.time()
        time.sleep(interval)
        rss_before = rss_mib(process.pid)

        peak = [rss_before]
        attacking = threading.Event()
        attacking.set()

        def watch_rss() -> None:
            while attacking.is_set():
                peak[0] = max(peak[0], rss_mib(process.pid))
                time.sleep(0.02)

        statuses: list[int] = []
        watcher = threading.Thread(target=watch_rss)
        attackers = [
            threading.Thread(target=lambda: statuses.append(chunked_post(url, "/v1/neighbors", 100 * MIB)[0]))
            for _ in range(2)
        ]
        attack_start = time.time()
        watcher.start()
        for thread in attackers:
            thread.start()
        for thread in attackers:
            thread.join(timeout=300)
        time.sleep(max(0.0, interval - (time.time() - attack_start)))  # an interval of at least 5 s
        attack_stop = time.time()
        attacking.clear()
        watcher.join()
        time.sleep(interval)
        after_stop = time.time()

        before, after = median_rtf(url, before_start, attack_start), median_rtf(url, attack_stop, after_stop)
        attacked, baseline = median_rtf(url, attack_start, attack_stop), max(before, after)
        print(f"statuses {statuses}; RSS {rss_before:.0f} MiB, +{peak[0] - rss_before:.1f} MiB at the peak of the attack; "
              f"median real-time factor {before:.3f} before, {attacked:.3f} under attack, {after:.3f} after")
        assert statuses == [413, 413]
        assert peak[0] - rss_before < 50, f"RSS grew by {peak[0] - rss_before:.0f} MiB"
        assert attacked < 1.25 * baseline, f"real-time factor {attacked:.3f} under attack, {baseline:.3f} without"
        assert process.poll() is None
    finally:
        stop_listen(process)
