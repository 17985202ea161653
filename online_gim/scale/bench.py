"""What a 2-stage pipeline buys (``online-gim bench``: ``pipeline_*`` keys): windows per second of
``listen --pipeline 2`` over one process at ``--speed max`` on the same cores, with the cost model
that bounds it: a pipeline runs at the pace of its slowest stage plus the transfer of one window to
the next stage, both measured here.

The runs are real ``online-gim listen`` processes on the synthetic speech stream: the single one
with ``threads`` torch threads, the pipeline's two ranks with ``threads // 2`` each (so both use the
same cores), and the single one again with ``threads // 2``. Throughput is windows over the
session's wall time; for the pipeline, rank 0's session plus the drain after it, until the last
stage has learned the last window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TRANSFER_ROUNDS = 20
"""Round trips timed for the transfer cost (after one untimed)."""


def pipeline_bench(windows: int, *, threads: int = 2, config: Path | None = None) -> dict[str, object]:
    """Runs one process and a 2-stage pipeline over ``windows`` windows of the synthetic stream and
    measures the transfer of one window between two processes. Returns the ``pipeline_*`` keys:
    ``pipeline_speedup_2`` (pipeline windows/s over single windows/s), both rates, the plan, each
    stage's compute seconds per window, the bytes and seconds of one window's transfer, and
    ``pipeline_bound_windows_per_second`` (1 / (slowest stage + transfer): the cost model), and
    ``pipeline_speedup_over_one_thread``: over one process with one thread (what pipelining alone
    buys, intra-op threads aside).

    Raises:
        RuntimeError: a listen run failed (its stderr's end is in the message).
    """
    arguments = ["--source", "synth", "--speed", "max", "--max-windows", str(windows), "--no-http", "--quiet"]
    arguments += ["--config", str(config)] if config is not None else []
    single = _listen(arguments, threads)
    one_thread = _listen(arguments, max(1, threads // 2))
    pipelined = _listen([*arguments, "--pipeline", "2"], max(1, threads // 2))
    pipeline = pipelined["pipeline"]
    stage_seconds = [stage["compute_seconds"] / stage["windows_processed"] for stage in pipeline["stages"]]
    bytes_per_window = float(pipeline["bytes_per_window"])
    transfer = transfer_seconds(int(bytes_per_window) // 4)
    single_rate = single["windows_processed"] / single["wall_seconds"]
    pipeline_rate = pipelined["windows_processed"] / (pipelined["wall_seconds"] + pipeline["drain_seconds"])
    return {
        "pipeline_speedup_2": pipeline_rate / single_rate,
        "pipeline_speedup_over_one_thread": pipeline_rate * one_thread["wall_seconds"] / one_thread["windows_processed"],
        "pipeline_windows_per_second": pipeline_rate,
        "single_windows_per_second": single_rate,
        "pipeline_plan": pipeline["plan"],
        "pipeline_stage_seconds_per_window": stage_seconds,
        "pipeline_bytes_per_window": bytes_per_window,
        "pipeline_transfer_seconds_per_window": transfer,
        "pipeline_bound_windows_per_second": 1.0 / (max(stage_seconds) + transfer),
    }


def _listen(arguments: list[str], threads: int) -> dict[str, object]:
    """The summary of ``online-gim listen *arguments`` run with ``threads`` torch threads (per rank)."""
    with tempfile.TemporaryDirectory() as folder:
        summary = Path(folder) / "summary.json"
        done = subprocess.run(
            [sys.executable, "-m", "online_gim.services.cli", "listen", *arguments, "--summary-json", str(summary)],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0 or not summary.is_file():
            raise RuntimeError(f"listen {' '.join(arguments)} failed: {done.stderr.strip()[-800:]}")
        return json.loads(summary.read_text())


def transfer_seconds(floats: int) -> float:
    """Seconds to send ``floats`` float32 values from one process to another over gloo on this
    machine's loopback (half the mean round trip of :data:`TRANSFER_ROUNDS` ping-pongs)."""
    context = mp.get_context("spawn")
    result = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_ping_pong, args=(rank, port, floats, result)) for rank in range(2)]
    for process in processes:
        process.start()
    seconds = result.get(timeout=120)
    for process in processes:
        process.join(timeout=30)
    return seconds


def _ping_pong(rank: int, port: int, floats: int, result) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    tensor = torch.zeros(floats)
    started = 0.0
    for round_trip in range(TRANSFER_ROUNDS + 1):
        if round_trip == 1:
            started = time.perf_counter()
        if rank == 0:
            dist.send(tensor, 1)
            dist.recv(tensor, 1)
        else:
            dist.recv(tensor, 0)
            dist.send(tensor, 0)
    if rank == 0:
        result.put((time.perf_counter() - started) / TRANSFER_ROUNDS / 2)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
