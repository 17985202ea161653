"""``online-gim listen`` as a user runs it: exact sample accounting, the summary, clean stops, and
``--schedule auto`` holding real time where updating every module cannot.

Most tests use a small learner (32 channels) to stay fast; the real-time test uses the shipped
default configuration, since the point is what the real stack costs on this machine.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from machine_speed import scaled

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"
AUDIO = MINI / "LibriSpeech"
LABELS = MINI / "LibriSpeech100_labels_split"
LISTEN = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())", "listen"]
WINDOW = 20480
SUMMARY_KEYS = {
    "windows_processed", "samples_in", "samples_dropped", "windows_skipped_nonfinite", "files_skipped",
    "seconds_of_audio", "wall_seconds", "final_loss", "module_updates_skipped_fraction", "real_time_factor",
}

pytestmark = pytest.mark.skipif(not AUDIO.is_dir(), reason=f"shared LibriSpeech mini not found at {AUDIO}")


def listen(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``listen`` run to its end; ``timeout``: seconds on the idle reference machine (``machine_speed``)."""
    return subprocess.run(
        [*LISTEN, "--no-http", "--quiet", *args], capture_output=True, text=True, timeout=scaled(timeout), cwd=ROOT
    )


def replay_audio() -> np.ndarray:
    """The whole corpus as one stream, in the replay's (sorted) order, decoded independently here."""
    paths = sorted(AUDIO.rglob("*.flac"), key=lambda p: p.stem)
    return np.concatenate([sf.read(p, dtype="float32")[0] for p in paths])


def test_replay_at_max_speed_processes_every_sample_exactly_once(small_config, tmp_path):
    result = listen(
        "--source", "librispeech", "--root", str(AUDIO), "--labels", str(LABELS), "--speed", "max",
        "--config", str(small_config), "--record", str(tmp_path / "heard.wav"),
        "--summary-json", str(tmp_path / "summary.json"),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    stream = replay_audio()
    total = len(stream)
    assert summary["stop_reason"] == "end_of_stream"
    assert summary["samples_in"] == total
    assert summary["windows_processed"] == total // WINDOW
    assert summary["samples_remainder"] == total % WINDOW
    assert summary["samples_dropped"] == 0 and summary["windows_dropped"] == 0
    assert summary["windows_skipped_nonfinite"] == 0 and summary["files_skipped"] == 0
    assert summary["seconds_of_audio"] == pytest.approx(total / 16_000)
    assert summary["module_updates_skipped_fraction"] == 0.0  # max speed: the replay waits for the learner
    assert set(summary["final_loss"]) == {str(m) for m in range(6)}
    assert all(math.isfinite(loss) for loss in summary["final_loss"].values())
    assert 0 < summary["real_time_factor"] and summary["wall_seconds"] > 0
    assert 0 < summary["step_seconds_median"] <= summary["compute_seconds"]
    assert 0 <= summary["probe_phone_accuracy"] <= 1 and 0 <= summary["probe_speaker_accuracy"] <= 1
    heard, rate = sf.read(tmp_path / "heard.wav", dtype="float32")
    assert rate == 16_000
    np.testing.assert_array_equal(heard, stream[: total // WINDOW * WINDOW])  # in order, none twice, none lost


def test_duration_and_max_windows_stop_exactly(small_config, tmp_path):
    common = ["--source", "librispeech", "--root", str(AUDIO), "--speed", "max", "--config", str(small_config)]
    result = listen(*common, "--duration", "10", "--summary-json", str(tmp_path / "d.json"))
    assert result.returncode == 0, result.stderr
    d = json.loads((tmp_path / "d.json").read_text())
    assert (d["stop_reason"], d["samples_in"], d["windows_processed"]) == ("duration", 160_000, 160_000 // WINDOW)
    assert d["samples_remainder"] == 160_000 % WINDOW and d["samples_dropped"] == 0

    result = listen(*common, "--max-windows", "3", "--hop", "10240", "--summary-json", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["stop_reason"], m["windows_processed"], m["hop"]) == ("max_windows", 3, 10240)


def test_a_run_with_an_end_shows_its_progress(small_config):
    """Off a terminal: a line every few seconds and a last one (window 20480 + 2 hops of 10240 = 2.56 s)."""
    result = subprocess.run(
        [*LISTEN, "--no-http", "--source", "librispeech", "--root", str(AUDIO), "--speed", "max",
         "--config", str(small_config), "--max-windows", "3", "--hop", "10240"],
        capture_output=True, text=True, timeout=scaled(300), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("online-gim listen: ")]
    assert progress and progress[-1].startswith("online-gim listen: 2.6/2.6 s of audio (100%), done in "), result.stderr
    assert "win 3" in progress[-1]


def test_the_audio_to_process_is_the_least_known_end():
    from online_gim.services.cli.listen import audio_to_process
    from online_gim.services.cli.listen_options import RunOptions
    from online_gim.streams.sources.librispeech import LibriSpeechReplay

    def total(source, duration=None, max_windows=None, hop=WINDOW):
        return audio_to_process(RunOptions(duration=duration, max_windows=max_windows), source, WINDOW, hop)

    one_pass = LibriSpeechReplay(AUDIO, speed=None)  # what its windows span: the remainder is left out
    assert total(one_pass) == len(replay_audio()) // WINDOW * WINDOW / 16_000
    assert total(one_pass, duration=10) == 7 * WINDOW / 16_000  # 160000 samples hold 7 windows
    assert total(one_pass, duration=10, max_windows=3, hop=10240) == pytest.approx(2.56)
    looping = LibriSpeechReplay(AUDIO, speed=None, loop=True)
    assert total(looping) is None and total(looping, max_windows=2) == pytest.approx(2.56)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_cleanly_with_a_summary(small_config, tmp_path, signum):
    summary_path, heard = tmp_path / "summary.json", tmp_path / "heard.wav"
    process = subprocess.Popen(
        [*LISTEN, "--no-http", "--source", "librispeech", "--root", str(AUDIO), "--loop", "--speed", "4",
         "--config", str(small_config), "--record", str(heard), "--summary-json", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        wait = scaled(120)
        deadline = time.monotonic() + wait
        while not (heard.exists() and heard.stat().st_size > 2 * WINDOW):  # a window is being learned from
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"no window processed in {wait:.0f} s"
            time.sleep(0.2)
        process.send_signal(signum)
        out, err = process.communicate(timeout=scaled(30))
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    summary = json.loads(summary_path.read_text())
    assert summary["stop_reason"] == f"signal:{signal.Signals(signum).name}"
    assert summary["windows_processed"] >= 1 and summary["samples_dropped"] == 0
    assert "stopped: signal" in out  # the printed summary


def test_errors_in_the_options_are_one_sentence(tmp_path):
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("not audio at all\n" * 100)
    for args in (
        ["--source", "file", "--path", str(not_audio)],
        ["--source", "librispeech"],
        ["--source", "librispeech", "--root", str(AUDIO), "--speed", "fast"],
    ):
        result = listen(*args, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("online-gim listen: error:"), (args, result.stderr)


def test_observers_see_every_step_and_are_closed_once(small_config):
    from online_gim.config import load_config
    from online_gim.learner import OnlineLearner
    from online_gim.run.audio import ListenSession
    from online_gim.run.contract import StepObserver
    from online_gim.streams.sources.librispeech import LibriSpeechReplay

    class Recorder:
        def __init__(self) -> None:
            self.starts: list[int] = []
            self.closed = 0

        def on_step(self, window, report) -> None:
            counters = session.counters  # the stream's, as the observer reads them
            assert report.window_start == window.start_sample and counters.windows_emitted == len(self.starts) + 1
            self.starts.append(window.start_sample)

        def close(self) -> None:
            self.closed += 1

    recorder = Recorder()
    assert isinstance(recorder, StepObserver)
    learner = OnlineLearner(load_config(small_config))
    session = ListenSession(LibriSpeechReplay(AUDIO, speed=None), learner, hop=WINDOW // 2, max_windows=5)
    session.add_observer(recorder)
    summary = session.run()
    assert recorder.starts == [k * WINDOW // 2 for k in range(5)] and recorder.closed == 1
    assert summary.windows_processed == 5 and summary.stop_reason == "max_windows"


def calibrate(rounds: int = 6) -> tuple[float, float]:
    """Mean seconds per window of the default learner on real speech: all modules, and one module
    (round-robin, the cheapest thing ``auto`` can fall back to)."""

    from online_gim.config import LearnerConfig
    from online_gim.learner import OnlineLearner
    from online_gim.streams.sources.librispeech import LibriSpeechReplay
    from online_gim.streams.ring_buffer import iter_windows

    learner = OnlineLearner(LearnerConfig())
    windows = iter_windows(LibriSpeechReplay(AUDIO, speed=None), window=WINDOW, hop=WINDOW)
    for _ in range(2):
        learner.step(next(windows))  # warm-up
    every, one = [], []
    for i in range(rounds):
        every.append(learner.step(next(windows)).seconds)
        one.append(learner.step(next(windows), modules=[i % learner.num_modules]).seconds)
    return statistics.mean(every), statistics.mean(one)


def replay_side_by_side(tmp_path: Path, speed: float, windows: int) -> dict[str, dict]:
    """The summaries of ``windows`` windows of speech replayed at ``speed`` with ``--schedule all``
    and ``--schedule auto``, run at the same time: whatever else loads the machine loads both."""
    processes = {}
    for schedule in ("all", "auto"):
        path = tmp_path / f"{schedule}.json"
        path.unlink(missing_ok=True)
        processes[schedule] = path, subprocess.Popen(
            [*LISTEN, "--no-http", "--quiet", "--source", "librispeech", "--root", str(AUDIO), "--speed", f"{speed:.3f}",
             "--schedule", schedule, "--duration", str(windows * WINDOW / 16_000), "--summary-json", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
    summaries = {}
    for schedule, (path, process) in processes.items():
        _, err = process.communicate(timeout=scaled(600))
        assert process.returncode == 0, err
        summaries[schedule] = json.loads(path.read_text())
    return summaries


@pytest.mark.slow
def test_auto_schedule_drops_no_audio_where_all_modules_do(tmp_path):
    """Replay at a speed this machine cannot sustain with every module updating: ``all`` loses audio,
    ``auto`` updates fewer modules and loses none.

    The speed is searched, since what this machine sustains changes with its load: it starts
    between what all modules and what one module per window take here (calibrated in this
    process); where neither run drops audio it rises to 1.5 times what ``all`` just sustained (the
    inverse of its real-time factor); where both drop it falls, halfway (in log) to the fastest
    speed at which neither dropped, or by 1.7. ``auto`` dropping where ``all`` does not fails at once.
    """
    windows = 32
    all_seconds, one_seconds = calibrate()
    speed = WINDOW / 16_000 / (all_seconds**0.6 * one_seconds**0.4)
    kept_up = None
    attempts = []
    for _ in range(4):
        runs = replay_side_by_side(tmp_path, speed, windows)
        attempts.append({"speed": round(speed, 3), **{schedule: {key: summary[key] for key in (
            "windows_processed", "samples_dropped", "module_updates_skipped_fraction", "real_time_factor",
        )} for schedule, summary in runs.items()}})
        print(attempts[-1])
        every, auto = runs["all"], runs["auto"]
        assert every["samples_dropped"] > 0 or auto["samples_dropped"] == 0, f"auto dropped, all did not: {attempts}"
        if every["samples_dropped"] > 0 and auto["samples_dropped"] == 0:
            break
        if every["samples_dropped"] == 0:
            kept_up = speed
            speed = max(1.5 / every["real_time_factor"], 1.3 * speed)
        else:
            speed = math.sqrt(kept_up * speed) if kept_up is not None else speed / 1.7
    else:
        pytest.fail(f"no speed found at which all dropped audio and auto did not: {attempts}")
    assert every["samples_in"] == auto["samples_in"] == windows * WINDOW
    assert every["windows_processed"] < windows and every["module_updates_skipped_fraction"] == 0.0
    assert auto["windows_processed"] == windows and auto["samples_windowed"] == windows * WINDOW
    assert auto["module_updates_skipped_fraction"] > 0
