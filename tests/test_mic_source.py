"""The microphone path, end to end, through a real PortAudio device.

``../shared/tools/virtmic.sh`` runs a PulseAudio daemon with a null sink whose monitor is an input
device that PortAudio (ALSA host API, ``pulse`` device) records from. A known signal is played into
it with ``paplay``, ``online-gim listen --source mic`` records and learns from it, and the audio the
learner processed (``--record``) is checked: its spectrum must show the tones that were played.
The daemon runs in a private runtime folder (``VIRTMIC_DIR``), so other users of virtmic on the
machine are not disturbed. Needs root (the daemon and apt); without root these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
VIRTMIC = ROOT.parent / "shared" / "tools" / "virtmic.sh"
LISTEN = [sys.executable, "-c", "import sys; from online_gim.services.cli import main; sys.exit(main())", "listen"]
TONES = (440.0, 2500.0)
"""The test signal: two tones, so that a wrong resampling ratio would move both peaks."""
AMPLITUDES = (0.4, 0.2)


def peak_frequencies(x: np.ndarray, count: int, rate: int = 16_000) -> list[float]:
    """The ``count`` strongest spectral peaks of ``x`` (Hann window), lowest first."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    peaks: list[float] = []
    for _ in range(count):
        i = int(spectrum.argmax())
        peaks.append(float(freqs[i]))
        spectrum[max(0, i - 20) : i + 20] = 0  # suppress the peak's main lobe
    return sorted(peaks)


def two_tones(path: Path, seconds: float, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    signal = sum(a * np.sin(2 * np.pi * f * t) for f, a in zip(TONES, AMPLITUDES))
    sf.write(path, signal.astype(np.float32), rate, subtype="PCM_16")


def assert_tones(x: np.ndarray) -> None:
    assert peak_frequencies(x, 2) == pytest.approx(list(TONES), abs=2.0)
    expected_rms = float(np.sqrt(sum(a * a / 2 for a in AMPLITUDES)))
    assert float(np.sqrt(np.mean(x**2))) == pytest.approx(expected_rms, rel=0.15)


class VirtualMic:
    """A running virtmic.sh daemon: ``env`` holds the PULSE_* variables its clients need."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.env = dict(os.environ, VIRTMIC_DIR=folder)

    def start(self) -> None:
        out = subprocess.run([str(VIRTMIC), "start"], env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        line = out.stdout.strip().splitlines()[-1]  # export A=1 B=2 C=3
        assert line.startswith("export "), out.stdout
        for item in line.removeprefix("export ").split():
            key, _, value = item.partition("=")
            self.env[key] = value

    def stop(self) -> None:
        subprocess.run([str(VIRTMIC), "stop"], env=self.env, capture_output=True, timeout=60)

    def play(self, path: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "-d", "virtmic_sink", str(path)], env=self.env)


@pytest.fixture(scope="module")
def virtmic():
    if os.geteuid() != 0:
        pytest.skip("the virtual microphone (virtmic.sh) runs a PulseAudio daemon as root; not root here")
    if not VIRTMIC.is_file():
        pytest.skip(f"{VIRTMIC} not found (the shared tools folder beside the project)")
    if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
        subprocess.run([str(VIRTMIC), "install"], check=True, timeout=600)
    mic = VirtualMic(tempfile.mkdtemp(prefix="virtmic-", dir="/tmp"))  # short: a unix socket lives there
    mic.start()
    saved = {key: os.environ.get(key) for key in mic.env if key.startswith("PULSE_")}
    os.environ.update({key: value for key, value in mic.env.items() if key.startswith("PULSE_")})
    if "sounddevice" in sys.modules:  # PortAudio lists the devices when it starts: let it see this server
        sd = sys.modules["sounddevice"]
        sd._terminate()
        sd._initialize()
    try:
        yield mic
    finally:
        mic.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def tone_file(tmp_path: Path) -> Path:
    path = tmp_path / "tones.wav"
    two_tones(path, seconds=60)
    return path


@pytest.mark.slow
def test_listen_records_and_learns_the_signal_played_into_the_microphone(virtmic, tone_file, tmp_path, small_config):
    player = virtmic.play(tone_file)
    try:
        time.sleep(0.5)
        result = subprocess.run(
            [*LISTEN, "--source", "mic", "--device", "pulse", "--duration", "3", "--no-http", "--quiet", "--schedule", "all",
             "--config", str(small_config), "--record", str(tmp_path / "heard.wav"),
             "--summary-json", str(tmp_path / "summary.json")],
            env=virtmic.env, capture_output=True, text=True, timeout=180, cwd=ROOT,
        )
    finally:
        player.terminate()
        player.wait()
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"] == "duration"
    assert summary["samples_in"] == 3 * 16_000 and summary["samples_dropped"] == 0
    assert summary["windows_processed"] == 3 * 16_000 // 20480
    assert summary["device"]["device"] == "pulse" and summary["device"]["input_rate"] > 0
    assert summary["device"]["device_losses"] == 0
    assert all(loss is not None for loss in summary["final_loss"].values())
    heard, rate = sf.read(tmp_path / "heard.wav", dtype="float32")
    assert rate == 16_000 and len(heard) == summary["windows_processed"] * 20480
    assert_tones(heard[1600:])  # the signal itself, resampled from the device's native rate


@pytest.mark.slow
def test_lost_device_is_reported_and_reopened(virtmic, tone_file):
    from online_gim.streams.ring_buffer import RingBuffer
    from online_gim.streams.sources.mic import MicrophoneSource

    buffer = RingBuffer(window=8000, hop=8000, source_id="mic")

    def read_for(seconds: float):
        windows, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (window := buffer.read_window(timeout=0.2)) is not None:
                windows.append(window)
        return windows

    def wait_until(predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    mic = MicrophoneSource("pulse", stall_seconds=1.5, backoff=(0.2, 1.0))
    player = virtmic.play(tone_file)
    try:
        mic.start(buffer)
        first = read_for(2.0)
        assert_tones(first[-1].samples.numpy())
        virtmic.stop()  # the device disappears (the daemon dies, and the player with it)
        player.wait(10)
        wait_until(lambda: mic.device_losses >= 1, timeout=10)
        assert mic.reopens == 0 and mic.last_error
        read_for(1.0)
        virtmic.start()  # ... and comes back
        player = virtmic.play(tone_file)
        wait_until(lambda: mic.reopens >= 1, timeout=20)
        later = read_for(2.5)
    finally:
        player.terminate()
        player.wait()
        mic.close()
    assert mic.device_losses >= 1 and mic.reopens == mic.device_losses  # every loss was answered
    assert later[-1].spans[-1].utterance_id == f"mic:pulse#{mic.reopens + 1}"  # a new recording after the reopen
    assert_tones(later[-1].samples.numpy())
    c = buffer.counters
    assert c.samples_in == buffer.samples_windowed + c.samples_dropped + buffer.pending_samples


def test_missing_device_is_one_clear_sentence():
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pytest.skip("PortAudio is not installed (test_missing_portaudio_is_one_clear_sentence covers that)")
    result = subprocess.run(
        [*LISTEN, "--source", "mic", "--device", "no-such-microphone-xyz", "--no-http"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no audio input device" in lines[0]


def test_missing_portaudio_is_one_clear_sentence(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(ROOT)]))
    for extra in ([], ["--list-devices"]):
        result = subprocess.run(
            [*LISTEN, "--source", "mic", "--no-http", *extra], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "PortAudio" in lines[0] and "apt-get install libportaudio2" in lines[0]
