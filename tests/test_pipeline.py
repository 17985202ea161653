"""``online-gim listen --pipeline``: the module stack as a pipeline of real processes in a gloo group
on loopback (started as torchrun starts them: one ``python -m online_gim.services.cli`` per rank with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``), against the single-process learner.

The plan's parsing and balancing are unit-tested first; the process tests read the learners'
weights from the run's state (rank 0's checkpoint and every later stage's shard)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from machine_speed import scaled
from online_gim.scale.plan import PipelinePlan, balanced_plan, parse_plan, stage_count
from online_gim.services.loadcheck import free_port
from online_gim.state.store import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"
needs_mini = pytest.mark.skipif(not (MINI / "LibriSpeech").is_dir(), reason="../shared/data/librispeech-mini is missing")
GRU_WITH_TOP_CONV = [(4, 5)]


# ---------------------------------------------------------------------------- the plan


def test_stage_boundaries_are_parsed_and_checked():
    assert parse_plan("0-2,3-5", 6, GRU_WITH_TOP_CONV).stages == (range(0, 3), range(3, 6))
    assert parse_plan("0,1-3,4-5", 6, GRU_WITH_TOP_CONV).stages == (range(0, 1), range(1, 4), range(4, 6))
    assert stage_count("0-1,2-3,4-5") == 3 and stage_count("2") == 2
    for spec, message in (
        ("0-2,4-5", "must start at 3"),
        ("0-2,3-4", "end at 4"),
        ("0-3,4-5,", "cannot read"),
        ("0-4,5", "must share a stage"),
        ("0-2,2-5", "must start at 3"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_plan(spec, 6, GRU_WITH_TOP_CONV)
    with pytest.raises(ValueError, match="at least 2 stages"):
        stage_count("1")


def test_balanced_plan_minimises_the_slowest_stage_and_keeps_the_gru_with_the_top_conv():
    costs = [0.40, 0.10, 0.10, 0.10, 0.05, 0.05]
    plan = balanced_plan(2, costs, GRU_WITH_TOP_CONV)
    assert plan.stages == (range(0, 1), range(1, 6))
    assert plan.stage_costs() == pytest.approx([0.40, 0.40])
    three = balanced_plan(3, [0.1, 0.1, 0.1, 0.1, 0.1, 0.9], GRU_WITH_TOP_CONV)
    assert three.stages[-1] == range(4, 6)  # the expensive GRU cannot leave the top conv module
    with pytest.raises(ValueError, match="at most 5 stages"):
        balanced_plan(6, costs, GRU_WITH_TOP_CONV)
    assert str(PipelinePlan((range(0, 3), range(3, 6)))) == "0-2,3-5"


# ---------------------------------------------------------------------------- processes


def _replay_args(windows: int) -> list[str]:
    return [
        "--source", "librispeech", "--root", str(MINI / "LibriSpeech"), "--labels", str(MINI / "LibriSpeech100_labels_split"),
        "--speed", "max", "--max-windows", str(windows), "--no-http", "--quiet",
    ]


def _start_ranks(arguments: list[str], world: int) -> list[subprocess.Popen]:
    """Starts ``world`` ranks of ``online-gim listen *arguments`` in one gloo group on loopback."""
    port = free_port()
    processes = []
    for rank in range(world):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
        }
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "online_gim.services.cli", "listen", *arguments],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    return processes


def _finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Each rank's exit code and output (stdout and stderr); kills every rank after ``timeout`` s."""
    results = []
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            out, err = process.communicate()
            pytest.fail(f"rank {processes.index(process)} did not finish within {timeout:.0f} s:\n{out}\n{err}")
        results.append((process.returncode, out + err))
    return results


def _run_single(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "online_gim.services.cli", "listen", *arguments], capture_output=True, text=True,
        timeout=scaled(300), env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _modules(state_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every module's weights (and its head's) in a run's state: rank 0's checkpoint and the shards."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for directory in [state_dir, *sorted(state_dir.glob("stage-*"))]:
        with CheckpointStore(directory, readonly=True) as store:
            learner = store.load_newest().state["learner"]
        first = learner["modules"][0]
        for offset, stage in enumerate(learner["stages"]):
            found[first + offset] = {**{f"module.{k}": v for k, v in stage["module"].items()},
                                     **{f"head.{k}": v for k, v in stage["head"].items()}}
    return found


def _assert_same_weights(pipeline: Path, single: Path) -> None:
    ours, reference = _modules(pipeline), _modules(single)
    assert sorted(ours) == sorted(reference) == list(range(6))
    for module, weights in reference.items():
        for name, value in weights.items():
            torch.testing.assert_close(ours[module][name], value, rtol=0, atol=1e-6, msg=f"module {module} {name}")


@needs_mini
@pytest.mark.slow
@pytest.mark.parametrize(("spec", "config"), [("0-2,3-5", None), ("0-1,2-3,4-5", "small")], ids=["2-ranks", "3-ranks"])
def test_a_synchronous_pipeline_learns_the_single_process_weights(tmp_path, small_config, spec, config):
    arguments = _replay_args(20) + (["--config", str(small_config)] if config else [])
    single = _run_single([*arguments, "--state", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    world = stage_count(spec)
    results = _finish(_start_ranks([*arguments, "--pipeline", spec, "--pipeline-sync", "--state", str(tmp_path / "pipe"),
                                    "--summary-json", str(tmp_path / "pipe.json")], world), scaled(300))
    assert [code for code, _ in results] == [0] * world, results
    summary = json.loads((tmp_path / "pipe.json").read_text())
    assert [s["windows_processed"] for s in summary["pipeline"]["stages"]] == [20] * world
    _assert_same_weights(tmp_path / "pipe", tmp_path / "single")


@needs_mini
@pytest.mark.slow
def test_an_asynchronous_pipeline_at_max_speed_drops_nothing_and_learns(tmp_path):
    arguments = _replay_args(24)
    results = _finish(_start_ranks([*arguments, "--pipeline", "2", "--state", str(tmp_path / "pipe"),
                                    "--summary-json", str(tmp_path / "pipe.json")], 2), scaled(300))
    assert [code for code, _ in results] == [0, 0], results
    summary = json.loads((tmp_path / "pipe.json").read_text())
    stages = summary["pipeline"]["stages"]
    assert [s["windows_processed"] for s in stages] == [24, 24] and [s["windows_dropped"] for s in stages] == [0, 0]
    assert summary["pipeline"]["bytes_per_window"] > 0
    assert summary["probe_speaker_accuracy"] is not None  # the probes run on the last stage; rank 0 reports them
    later = stages[1]
    first, final = later["first_loss"], later["final_loss"]  # the later stage's first and last 10 losses, per module
    assert sum(final.values()) < sum(first.values()), (first, final)
    assert sum(summary["final_loss"].values()) / 6 < 0.99, summary["final_loss"]  # below chance (1.0) on average
    # nothing dropped: the asynchronous pipeline learned exactly what one process learns
    single = _run_single([*arguments, "--state", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    _assert_same_weights(tmp_path / "pipe", tmp_path / "single")


@needs_mini
@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0], ids=["middle-stage", "rank-0"])
def test_a_killed_rank_ends_the_others_within_five_seconds_and_state_resumes_every_stage(tmp_path, small_config, killed):
    state = tmp_path / "state"
    arguments = _replay_args(100_000) + ["--config", str(small_config), "--loop", "--pipeline", "0-1,2-3,4-5",
                                         "--state", str(state), "--checkpoint-every-windows", "5"]
    processes = _start_ranks(arguments, 3)
    deadline = time.monotonic() + scaled(120)
    while not (state / "pipeline.json").exists() or len(json.loads((state / "pipeline.json").read_text())["shards"]) < 2:
        assert time.monotonic() < deadline, "no checkpoint of every stage was written"
        assert all(p.poll() is None for p in processes), _finish(processes, 10)
        time.sleep(0.2)
    os.kill(processes[killed].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    others = [p for i, p in enumerate(processes) if i != killed]
    for process in others:
        process.wait(timeout=scaled(5) + 5)
    assert time.monotonic() - killed_at < scaled(5), "the other ranks took longer than 5 s to stop"
    results = _finish(others, 10)
    lost = f"stage {killed}"
    for code, output in results:
        assert code == 4, output
        assert "lost" in output and lost in output, output
    processes[killed].wait()

    resumed = _finish(_start_ranks([*arguments[: arguments.index("--max-windows") + 1], "3",
                                    *arguments[arguments.index("--max-windows") + 2 :]], 3), scaled(300))
    assert [code for code, _ in resumed] == [0, 0, 0], resumed
    assert "resuming from" in resumed[0][1]
    for stage in (1, 2):
        assert f"stage {stage} (modules" in resumed[stage][1] and "resuming from model step" in resumed[stage][1], resumed[stage][1]


# ---------------------------------------------------------------------------- the bench


@pytest.mark.slow
def test_the_pipeline_bench_measures_both_runs_the_stage_split_and_the_transfer(small_config):
    """``online-gim bench``'s pipeline keys, from real runs: ``listen --pipeline 2`` started without a
    launcher (it re-executes itself under torchrun) against one process. No timed assertion: the
    relations between the numbers must hold on any machine."""
    from online_gim.scale.bench import pipeline_bench

    result = pipeline_bench(6, threads=2, config=small_config)
    stages = result["pipeline_stage_seconds_per_window"]
    assert result["pipeline_plan"].count(",") == 1 and len(stages) == 2 and all(s > 0 for s in stages)
    assert result["pipeline_speedup_2"] == pytest.approx(
        result["pipeline_windows_per_second"] / result["single_windows_per_second"]
    )
    # the small learner's stage 0 ends with a conv module of 32 channels: its output crosses, 4 bytes a value
    first = parse_plan(result["pipeline_plan"], 6, GRU_WITH_TOP_CONV).stages[0]
    frames = 20480
    for stride in (5, 4, 2, 2, 2)[: first.stop]:
        frames //= stride
    assert 32 * frames * 4 < result["pipeline_bytes_per_window"] < 32 * (frames + 2) * 4 + 4096
    assert 0 < result["pipeline_transfer_seconds_per_window"] < max(stages)
    assert result["pipeline_bound_windows_per_second"] == pytest.approx(
        1 / (max(stages) + result["pipeline_transfer_seconds_per_window"])
    )


@needs_mini
@pytest.mark.slow
def test_rank_0_serves_every_module_of_every_stage_and_a_stop_signal_ends_the_pipeline_cleanly(tmp_path, small_config):
    import httpx

    from online_gim.services.loadcheck import wait_ready

    port = free_port()
    arguments = [a for a in _replay_args(100_000) if a != "--no-http"]
    arguments[arguments.index("max")] = "4"  # paced: four times real time
    processes = _start_ranks([*arguments, "--loop", "--config", str(small_config), "--pipeline", "0-2,3-5",
                              "--http", f"127.0.0.1:{port}", "--summary-json", str(tmp_path / "run.json")], 2)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, processes[0], timeout=scaled(120))
        wanted = {(str(m), "0") for m in range(3)} | {(str(m), "1") for m in range(3, 6)}
        deadline = time.monotonic() + scaled(60)
        while True:
            text = httpx.get(url + "/metrics", timeout=10).text
            found = set(re.findall(r'^online_gim_module_loss\{module="(\d+)",stage="(\d+)"\}', text, re.M))
            if found >= wanted or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found == wanted
    finally:
        processes[0].send_signal(signal.SIGTERM)
    results = _finish(processes, scaled(60))
    assert [code for code, _ in results] == [0, 0], results
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["stop_reason"] == "signal:SIGTERM" and summary["pipeline"]["error"] is None
    stages = summary["pipeline"]["stages"]
    assert stages[1]["windows_processed"] + stages[1]["windows_dropped"] == summary["pipeline"]["windows_sent"]


@pytest.mark.slow
def test_the_documented_multi_machine_command_runs_one_stage_per_node(tmp_path, small_config):
    """README's command for two machines, both on this one: each node's ``online-gim listen
    --nnodes 2 --node-rank K --rdzv-endpoint HOST:PORT`` starts its launcher; node 0 holds rank 0."""
    port = free_port()
    arguments = ["--source", "synth", "--speed", "max", "--max-windows", "4", "--no-http", "--quiet", "--config", str(small_config),
                 "--pipeline", "0-2,3-5", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "online_gim.services.cli", "listen", *arguments, "--node-rank", str(node),
             "--summary-json", str(tmp_path / f"node{node}.json")],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for node in (0, 1)
    ]
    results = _finish(nodes, scaled(180))
    assert [code for code, _ in results] == [0, 0], results
    summary = json.loads((tmp_path / "node0.json").read_text())  # rank 0 writes the run's summary
    assert [s["modules"] for s in summary["pipeline"]["stages"]] == ["0-2", "3-5"]
    assert [s["windows_processed"] for s in summary["pipeline"]["stages"]] == [4, 4]
    assert not (tmp_path / "node1.json").exists()
