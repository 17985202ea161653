"""Load check (not a unit test): does serving many event-stream clients slow the learner?

Runs ``online-gim listen --source synth --http 127.0.0.1:<port>`` with the same source and seed,
once with no client and once with ``--clients`` concurrent ``/v1/stream`` (SSE) clients for the
measurement interval (``--repeats`` pairs, in A-B-B-A order so that a slow drift of the machine's
speed cancels). In each run the learner's real-time factor over the interval is measured twice:
the mean, from ``/metrics`` (growth of ``online_gim_update_duration_seconds_sum`` divided by the
audio seconds of the windows processed meanwhile), and the median over the windows of the
interval, from ``/v1/history`` (robust to a few windows slowed by something else on the machine).

    python -m online_gim.services.loadcheck --seconds 60 --clients 50 [--warmup 20] [--repeats 1] [-- extra listen args]

Prints one JSON object and exits 1 when the median real-time factor with clients differs from the
one without by 10 % or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

WINDOW_SECONDS = 20480 / 16000
LISTEN = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())"]
"""``online-gim`` with this interpreter (the argument after it is the sub-command)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for name in ("online_gim_update_duration_seconds_sum", "online_gim_windows_processed_total",
                 "online_gim_windows_dropped_total", "online_gim_samples_dropped_total"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[name] = float(match.group(1)) if match else float("nan")
    return values


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"listen exited early with code {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("listen did not become ready")


def stop_listen(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGINT (listen's clean stop), then wait ``timeout`` seconds; kill it if it is still running."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def stream_clients(url: str, clients: int, seconds: float) -> list[int]:
    """``clients`` concurrent SSE readers for ``seconds``; returns the events each received."""
    counts = [0] * clients

    async def one(i: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", url + "/v1/stream") as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    counts[i] += 1

    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None), limits=limits) as client:
        tasks = [asyncio.create_task(one(i, client)) for i in range(clients)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def run_once(args: argparse.Namespace, clients: int) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    total = args.warmup + args.seconds + 30
    command = [*LISTEN, "listen", "--source", "synth", "--http", f"127.0.0.1:{port}",
               "--duration", str(total), *args.listen_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile()  # never a pipe nobody reads: a full pipe would stall the learner
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        wait_ready(url, process)
        time.sleep(args.warmup)
        before = scrape(url)
        wall_from = time.time()
        started = time.monotonic()
        if clients:
            counts = asyncio.run(stream_clients(url, clients, args.seconds))
        else:
            time.sleep(args.seconds)
            counts = []
        after = scrape(url)
        elapsed = time.monotonic() - started
        wall_to = time.time()
        points = httpx.get(url + "/v1/history?limit=10000", timeout=10).json()["points"]
    finally:
        stop_listen(process, timeout=30)
        log.close()
    per_window = [p["rtf"] for p in points if wall_from <= p["wall"] <= wall_to and p["rtf"] is not None]
    windows = after["online_gim_windows_processed_total"] - before["online_gim_windows_processed_total"]
    compute = after["online_gim_update_duration_seconds_sum"] - before["online_gim_update_duration_seconds_sum"]
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "windows": int(windows),
        "real_time_factor_mean": compute / (windows * WINDOW_SECONDS) if windows else float("nan"),
        "real_time_factor_median": statistics.median(per_window) if per_window else float("nan"),
        "windows_dropped": int(after["online_gim_windows_dropped_total"] - before["online_gim_windows_dropped_total"]),
        "events_per_client_min": min(counts) if counts else None,
        "events_per_client_max": max(counts) if counts else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement interval per run")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of learning before measuring")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (A-B-B-A order)")
    parser.add_argument("listen_args", nargs="*", help="extra arguments for online-gim listen (after --)")
    args = parser.parse_args(argv)
    runs: list[dict] = []
    for pair in range(args.repeats):
        order = (0, args.clients) if pair % 2 == 0 else (args.clients, 0)
        runs.extend(run_once(args, clients) for clients in order)

    def summary(key: str) -> dict[str, float]:
        base = statistics.median(r[key] for r in runs if r["clients"] == 0)
        loaded = statistics.median(r[key] for r in runs if r["clients"] > 0)
        return {"without_clients": round(base, 4), "with_clients": round(loaded, 4),
                "change": round(loaded / base - 1.0, 4)}

    result = {"runs": runs, "mean": summary("real_time_factor_mean"), "median": summary("real_time_factor_median")}
    print(json.dumps(result, indent=2))
    return 0 if abs(result["median"]["change"]) < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
