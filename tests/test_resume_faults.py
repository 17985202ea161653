"""``online-gim listen --state`` under faults: SIGKILL at random moments and inside checkpoint
writes, restarted each time, and SIGTERM inside a checkpoint write.

The listen processes replay the shared LibriSpeech mini corpus at maximum speed with a small
learner (``FAULT_CONFIG``: 10240-sample windows, 241 windows per pass) and checkpoint every 5
windows. ``ONLINE_GIM_CHECKPOINT_WRITE_DELAY`` makes every atomic write pause half-way, so that a
kill or a signal can be aimed at the inside of a write (the ``*.tmp`` file is then on disk).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile

from online_gim.state.atomic import WRITE_DELAY_ENV
from online_gim.state.store import MANIFEST, CheckpointStore
from test_checkpoint import AUDIO, FAULT_CONFIG, ROOT, WINDOW, needs_audio

EVERY_WINDOWS = 5
KILLS = 10
SEED = 20261122
RESUMED = re.compile(r"resuming from \S+ \(model step (\d+),|no checkpoint yet")

pytestmark = [needs_audio, pytest.mark.slow]


class Listen:
    """An ``online-gim listen --state`` child process whose stderr is read by a thread."""

    def __init__(self, state: Path, config: Path, *, write_delay: float | None = None, summary: Path | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop(WRITE_DELAY_ENV, None)
        if write_delay is not None:
            env[WRITE_DELAY_ENV] = str(write_delay)
        command = [
            sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())",
            "listen", "--source", "librispeech", "--root", str(AUDIO), "--speed", "max", "--no-http", "--quiet",
            "--config", str(config), "--state", str(state), "--checkpoint-every-windows", str(EVERY_WINDOWS),
        ]
        if summary is not None:
            command += ["--summary-json", str(summary)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        self._reader.join(timeout=5)
        return "".join(self.lines)

    def resumed_step(self, timeout: float = 60) -> int:
        """The model step it says it resumes from (0 for a fresh start), once it has said it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := RESUMED.search(line):
                    return int(match.group(1) or 0)
            assert self.process.poll() is None, f"listen exited early ({self.process.returncode}): {self.stderr}"
            time.sleep(0.01)
        raise AssertionError(f"listen did not start within {timeout} s: {''.join(self.lines)}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        assert self.process.returncode == -signal.SIGKILL, self.stderr


def newest_sequence(state: Path) -> int:
    try:
        checkpoints = json.loads((state / MANIFEST).read_text())["checkpoints"]
    except FileNotFoundError:
        return 0
    return checkpoints[-1]["sequence"] if checkpoints else 0


def temporary_files(state: Path) -> set[str]:
    return {p.name for p in state.glob("*.tmp")} if state.is_dir() else set()


def poll(condition, run: Listen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.process.poll() is None, f"listen ended before it could be killed: {run.stderr}"
        assert time.monotonic() < deadline, "timed out waiting for the listen process"
        time.sleep(0.005)


def kill_at_random_moment(run: Listen, state: Path, rng: random.Random) -> None:
    """After 0-2 more completed checkpoints, a random time later (inside a window, a save, anywhere)."""
    target = newest_sequence(state) + rng.randint(0, 2)
    poll(lambda: newest_sequence(state) >= target, run)
    time.sleep(rng.uniform(0.0, 0.3))
    run.kill()


def kill_inside_a_write(run: Listen, state: Path, rng: random.Random) -> None:
    """While the k-th write (k = 1..4: a checkpoint file or the manifest) is half done."""
    wanted, seen, present = rng.randint(1, 4), 0, set()

    def reached() -> bool:
        nonlocal seen, present
        now = temporary_files(state)
        seen += len(now - present)
        present = now
        return seen >= wanted

    poll(reached, run)
    run.kill()
    assert temporary_files(state), "the kill did not land inside a write"


def check_state(state: Path) -> int:
    """Every listed checkpoint is intact; returns the model step of the newest (0 when none)."""
    store = CheckpointStore(state, readonly=True)
    assert store.verify() == []
    newest = store.load_newest()
    return 0 if newest is None else newest.state["learner"]["counters"]["updates"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(FAULT_CONFIG)
    return path


def test_sigkill_at_random_moments_never_loses_a_checkpoint_or_an_utterance(tmp_path, config):
    rng = random.Random(SEED)
    state = tmp_path / "state"
    kinds = ["random", "write"] * (KILLS // 2)
    rng.shuffle(kinds)
    completed = 0  # model step of the newest completed checkpoint
    runs_that_saved = 0
    for kind in kinds:
        sequence = newest_sequence(state)
        run = Listen(state, config, write_delay=0.3 if kind == "write" else None)
        assert run.resumed_step() == completed, run.stderr  # resumes from the newest completed checkpoint
        (kill_inside_a_write if kind == "write" else kill_at_random_moment)(run, state, rng)
        assert not re.search(r"corrupt|unreadable|falling back|Traceback", run.stderr), run.stderr
        step = check_state(state)
        assert step >= completed, f"the model step went back from {completed} to {step}"
        completed = step
        runs_that_saved += newest_sequence(state) > sequence

    summary = tmp_path / "summary.json"
    run = Listen(state, config, summary=summary)
    assert run.process.wait(timeout=120) == 0, run.stderr
    assert "Traceback" not in run.stderr
    document = json.loads(summary.read_text())
    assert document["stop_reason"] == "end_of_stream"
    assert document["resumed_from_step"] == completed > 0
    assert document["checkpoints_written"] >= 1
    assert check_state(state) > completed
    assert temporary_files(state) == set()

    final = CheckpointStore(state, readonly=True).load_newest().state
    files = sorted(AUDIO.rglob("*.flac"))
    total_samples = sum(soundfile.info(path).frames for path in files)
    windows = total_samples // WINDOW
    assert final["listen"]["utterances"] == len(files) == 12  # every utterance, each counted once
    assert final["listen"]["last_utterance"] == max(path.stem for path in files)
    assert final["listen"]["windows"] == windows  # every window once: none skipped, none learned twice
    assert final["listen"]["runs"] == runs_that_saved + 1
    assert final["learner"]["counters"]["steps"] == windows
    assert final["stream"]["next_sample"] == windows * WINDOW


def test_sigterm_inside_a_checkpoint_write_leaves_a_valid_state_and_exits_0_within_5_s(tmp_path, config):
    state, summary = tmp_path / "state", tmp_path / "summary.json"
    run = Listen(state, config, write_delay=0.5, summary=summary)
    run.resumed_step()
    poll(lambda: bool(temporary_files(state)), run)
    signalled = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    returncode = run.process.wait(timeout=10)
    elapsed = time.monotonic() - signalled
    assert returncode == 0, run.stderr
    assert elapsed < 5, f"exited {elapsed:.1f} s after SIGTERM"
    assert check_state(state) == EVERY_WINDOWS  # the checkpoint being written was completed
    assert temporary_files(state) == set()
    document = json.loads(summary.read_text())
    assert document["stop_reason"] == "signal:SIGTERM"
    assert document["checkpoints_written"] == 1 and document["resumed_from_step"] == 0
