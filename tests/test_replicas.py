"""``listen --replicas``: learners on their own streams averaging their weights, in real processes
on a gloo group over loopback: the averaged weights (equal on every rank, the mean of what the
ranks held), streams of unequal length, a replica killed with SIGKILL, resume, and the command
started by hand under ``torchrun``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from machine_speed import scaled

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "librispeech-mini" / "LibriSpeech"
LISTEN = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())", "listen"]
EVERY = 2
"""Windows between averaging rounds in these tests."""

requires_mini = pytest.mark.skipif(not MINI.is_dir(), reason=f"shared LibriSpeech mini not found at {MINI}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the averager


def _flat(parameters: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parameters]).clone()


def _averaging_rank(rank: int, world_size: int, port: int, config_yaml: str, outs: list[str]) -> None:
    """One replica: learns EVERY windows of its own noise (a round at the last), then ``1 + 2 * rank
    * EVERY`` more windows (streams of unequal length), then closes; saves what it held."""
    import yaml

    from online_gim.config import LearnerConfig
    from online_gim.learner import OnlineLearner
    from online_gim.scale.group import join, leave
    from online_gim.scale.replicas import ReplicaAverager
    from online_gim.streams.window import AudioWindow

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    join(timeout_seconds=60)
    learner = OnlineLearner(LearnerConfig.model_validate(yaml.safe_load(config_yaml)))
    averager = ReplicaAverager(learner, every=EVERY)
    averager.start()
    generator = torch.Generator().manual_seed(100 + rank)
    held = None
    for index in range(EVERY + 1 + 2 * rank * EVERY):
        window = AudioWindow(torch.randn(20480, generator=generator) * 0.1, start_sample=index * 20480)
        report = learner.step(window)
        if index == EVERY - 1:
            held = _flat(averager.parameters)
        averager.on_step(window, report)
        if index == EVERY - 1:
            averaged = _flat(averager.parameters)
    averager.close()
    torch.save({"held": held, "averaged": averaged, "final": _flat(averager.parameters), "rounds": averager.rounds}, outs[rank])
    leave()


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_a_round_leaves_every_rank_with_the_mean_and_unequal_streams_end_equal(world_size, tmp_path):
    from conftest import SMALL_LEARNER_YAML

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    context = mp.start_processes(
        _averaging_rank, args=(world_size, free_port(), SMALL_LEARNER_YAML, outs), nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + scaled(60)
    for process in context.processes:
        process.join(max(0.1, deadline - time.monotonic()))
    alive = [p.pid for p in context.processes if p.is_alive()]
    for process in context.processes:
        if process.is_alive():
            process.kill()
    assert not alive, "a replica hung"
    assert [p.exitcode for p in context.processes] == [0] * world_size
    results = [torch.load(out) for out in outs]
    mean = torch.stack([r["held"] for r in results]).mean(0)
    assert not torch.equal(results[0]["held"], results[1]["held"])  # their streams differ: so did their weights
    for result in results:
        assert torch.equal(result["averaged"], results[0]["averaged"])
        torch.testing.assert_close(result["averaged"], mean, rtol=0, atol=1e-6)
        assert torch.equal(result["final"], results[0]["final"])
        assert result["rounds"] == results[0]["rounds"]
    assert not torch.equal(results[0]["final"], results[0]["averaged"])  # learned after that round: the last one averaged it
    # start, the round at window EVERY, the longest stream's rounds after it, and the last one
    assert results[0]["rounds"] == 2 + (1 + 2 * (world_size - 1) * EVERY) // EVERY + 1


# ---------------------------------------------------------------------- sharding


@requires_mini
@pytest.mark.parametrize("order", ["sorted", "shuffle"])
def test_shards_of_a_replay_partition_every_pass_of_its_order(order):
    from online_gim.streams.sources.librispeech import LibriSpeechReplay

    whole = LibriSpeechReplay(MINI, order=order, seed=3)
    shards = [LibriSpeechReplay(MINI, order=order, seed=3, shard=(index, 3)) for index in range(3)]
    for loop in (0, 1):
        ids = [u.id for u in whole.order_of(loop)]
        for index, shard in enumerate(shards):
            assert [u.id for u in shard.order_of(loop)] == ids[index::3]
    with pytest.raises(ValueError, match="shard"):
        LibriSpeechReplay(MINI, shard=(3, 3))


# ---------------------------------------------------------------------- the command


def _replicas(count: int, port: int, *args: str) -> list[subprocess.Popen]:
    """``listen --replicas count`` as ``torchrun`` would start it: one process per rank."""
    processes = []
    for rank in range(count):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(count),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        }
        processes.append(subprocess.Popen(
            [*LISTEN, "--replicas", str(count), *args], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        ))
    return processes


def _checkpointed(directory: Path) -> bool:
    manifest = directory / "manifest.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("checkpoints"))


@requires_mini
@pytest.mark.slow
def test_a_killed_replica_ends_the_others_within_seconds_and_the_same_command_resumes_every_replica(small_config, tmp_path):
    state = tmp_path / "state"
    common = [
        "--shard-by-rank", "--source", "librispeech", "--root", str(MINI), "--speed", "max", "--config", str(small_config),
        "--no-http", "--quiet", "--average-every", str(EVERY), "--state", str(state), "--summary-json", str(tmp_path / "run.json"),
    ]
    processes = _replicas(3, free_port(), *common, "--loop", "--checkpoint-every-windows", "2")
    try:
        deadline = time.monotonic() + scaled(90)
        while not all(_checkpointed(state / f"replica-{r}") for r in range(3)):
            assert time.monotonic() < deadline, "no checkpoint from every replica"
            assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        for rank in (0, 2):
            processes[rank].wait(timeout=scaled(5))
            assert time.monotonic() - killed < scaled(5)
            err = processes[rank].stderr.read()
            assert processes[rank].returncode == 4, err
            assert "replica rank 1 was lost" in err and "Traceback" not in err
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    resumed = _replicas(3, free_port(), *common, "--max-windows", "2")
    for rank, process in enumerate(resumed):
        out, err = process.communicate(timeout=scaled(90))
        assert process.returncode == 0, err
        summary = json.loads((tmp_path / f"run.rank{rank}.json").read_text())
        assert summary["resumed_from_step"] > 0 and summary["source"] == f"librispeech:shard{rank}of3"
        assert (summary["replicas"]["rank"], summary["replicas"]["replicas"], summary["replicas"]["peer_lost"]) == (rank, 3, None)


@requires_mini
@pytest.mark.slow
def test_listen_replicas_started_by_hand_runs_under_torchrun_and_ends_with_equal_weights(small_config, tmp_path):
    from online_gim.state.store import CheckpointStore

    result = subprocess.run(
        [*LISTEN, "--replicas", "2", "--shard-by-rank", "--source", "librispeech", "--root", str(MINI), "--speed", "max",
         "--config", str(small_config), "--no-http", "--quiet", "--max-windows", "5", "--average-every", "2",
         "--state", str(tmp_path / "state"), "--summary-json", str(tmp_path / "run.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=scaled(120),
    )
    assert result.returncode == 0, result.stderr
    summaries = [json.loads((tmp_path / f"run.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [s["source"] for s in summaries] == ["librispeech:shard0of2", "librispeech:shard1of2"]
    assert [s["windows_processed"] for s in summaries] == [5, 5]
    rounds = [s["replicas"]["averaging_rounds"] for s in summaries]
    assert rounds == [1 + 2 + 1] * 2  # the start, after windows 2 and 4, the last
    assert summaries[0]["replicas"]["averaged_bytes_per_round"] > 0
    learners = [CheckpointStore(tmp_path / "state" / f"replica-{rank}", readonly=True).load_newest().state["learner"] for rank in (0, 1)]
    for first, second in zip(learners[0]["stages"], learners[1]["stages"]):
        for part in ("module", "head"):
            for name, tensor in first[part].items():
                if "running" not in name and tensor.is_floating_point():  # running statistics stay each stream's
                    assert torch.equal(tensor, second[part][name]), (part, name)


def test_options_a_replicated_run_cannot_work_with_are_refused_before_any_process_starts(capsys):
    from online_gim.services.cli import main

    assert main(["listen", "--replicas", "2", "--shard-by-rank", "--source", "file", "--path", "talk.wav"]) == 2
    assert "{rank} in --path" in capsys.readouterr().err
    assert main(["listen", "--replicas", "2", "--shard-by-rank", "--source", "mic"]) == 2
    assert "not --source mic" in capsys.readouterr().err
    assert main(["listen", "--replicas", "2", "--source", "synth", "--path", "talk-{rank}.wav"]) == 2
    assert "use it with --source file" in capsys.readouterr().err
