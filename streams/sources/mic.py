"""The microphone: a ``sounddevice`` (PortAudio) input stream pushed into the ring buffer.

Unlike the pull sources, the microphone is a **push** source: PortAudio calls a callback on its own
thread with every block of audio, and the callback downmixes it to mono, resamples it from the
device's native rate to 16 kHz (:class:`StreamingResampler`, the sinc kernel of
:mod:`online_gim.streams.resample` applied block by block, so the result equals resampling the whole recording
at once) and pushes it into the
:class:`~online_gim.streams.ring_buffer.RingBuffer`, which never blocks (a slow learner loses the oldest audio,
counted). Input overflows reported by the driver are counted in ``counters.overflows``.

Device loss (the stream stops, errors out, or delivers nothing for ``stall_seconds``) is detected
by a watchdog thread, reported with a warning, counted (:attr:`MicrophoneSource.device_losses`) and
answered by reopening the device with exponential backoff until it comes back (or the source is
closed). Each opening is a new recording: its chunks carry ``utterance_id = "<source_id>#<n>"``.

Without PortAudio (importing ``sounddevice`` raises ``OSError``), without any input device, or with
a device that cannot be found or opened, :class:`MicrophoneUnavailable` is raised with one sentence
saying what is missing and how to fix it.

Usage::

    mic = MicrophoneSource(device="pulse")       # name (substring) or index; None = default input
    mic.start(buffer)                            # opens the device; raises MicrophoneUnavailable
    for window in buffer: ...
    mic.close()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Protocol

import numpy as np

from online_gim.streams.chunk import AudioChunk
from online_gim.streams.counters import StreamCounters
from online_gim.streams.window import SAMPLE_RATE

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `sudo apt-get install libportaudio2` (Debian/Ubuntu), "
    "`sudo dnf install portaudio` (Fedora) or `brew install portaudio` (macOS)"
)


OPEN_GRACE_SECONDS = 5.0
"""A freshly opened stream may take this long to deliver its first block before it counts as lost
(a PulseAudio source can start in 2 s blocks)."""


class MicrophoneUnavailable(RuntimeError):
    """The microphone cannot be used; the message is one sentence saying what is missing and how to fix it."""


class PushTarget(Protocol):
    """Where the microphone pushes its audio (a :class:`~online_gim.streams.ring_buffer.RingBuffer`)."""

    counters: StreamCounters

    def push(self, chunk: AudioChunk) -> bool: ...


def import_sounddevice() -> Any:
    """Imports ``sounddevice``, turning a missing PortAudio library into :class:`MicrophoneUnavailable`."""
    try:
        import sounddevice
    except OSError as error:  # the wheel raises OSError("PortAudio library not found")
        raise MicrophoneUnavailable(
            f"the microphone needs the PortAudio library, which was not found ({error}): {INSTALL_HINT}"
        ) from None
    except ImportError as error:
        raise MicrophoneUnavailable(
            f"the microphone needs the Python package sounddevice ({error}): `pip install sounddevice`"
        ) from None
    return sounddevice


def input_devices() -> list[dict[str, Any]]:
    """The input devices PortAudio sees: ``index``, ``name``, ``hostapi``, ``channels``,
    ``samplerate`` (native rate) and ``default`` (whether it is the default input).

    Raises:
        MicrophoneUnavailable: PortAudio is not installed.
    """
    sd = import_sounddevice()
    try:
        default = sd.default.device[0]
        hostapis = sd.query_hostapis()
        devices = sd.query_devices()
    except sd.PortAudioError as error:
        raise MicrophoneUnavailable(f"PortAudio cannot list the audio devices: {error}") from None
    return [
        {
            "index": int(device["index"]),
            "name": device["name"],
            "hostapi": hostapis[device["hostapi"]]["name"],
            "channels": int(device["max_input_channels"]),
            "samplerate": float(device["default_samplerate"]),
            "default": int(device["index"]) == default,
        }
        for device in devices
        if device["max_input_channels"] > 0
    ]


def parse_device(value: str | int | None) -> str | int | None:
    """``"3"`` -> ``3`` (an index); a name stays a string; ``None``/``""``/``"default"`` -> ``None``.

    Examples:
        >>> parse_device("3"), parse_device("pulse"), parse_device(None)
        (3, 'pulse', None)
    """
    if value is None or (isinstance(value, str) and value.strip() in {"", "default"}):
        return None
    if isinstance(value, int) or value.strip().isdigit():
        return int(value)
    return value


def no_device_message(device: str | int | None, devices: list[dict[str, Any]]) -> str:
    """The sentence explaining why ``device`` is not an input device PortAudio offers."""
    if not devices:
        return (
            "no audio input device found (PortAudio lists none): connect a microphone, or on a headless "
            "Linux machine start PulseAudio with a virtual source (`sudo apt-get install pulseaudio "
            "pulseaudio-utils libasound2-plugins`, then `pulseaudio --start`)"
        )
    names = ", ".join(f"{d['index']}: {d['name']!r}" for d in devices)
    if device is None:
        return f"there is no default audio input device: pick one with --device NAME|INDEX ({names})"
    return f"no audio input device matches {device!r}: choose one of {names} (see --list-devices)"


class StreamingResampler:
    """Resamples a stream block by block, exactly as resampling it in one piece would.

    The sinc resampler of :mod:`online_gim.streams.resample` (torchaudio's numbers; ``lowpass_filter_width=6``,
    ``rolloff=0.99``, Hann window) maps
    each group of ``o = orig / g`` input samples (``g = gcd(orig, new)``) to ``n = new / g`` output
    samples through a kernel that reaches ``width`` input samples to either side. This class keeps
    the input that later outputs still need and emits an output group as soon as its whole support
    has arrived, so the output lags the input by about ``width`` samples and, away from the very
    first samples, equals :func:`online_gim.streams.resample.resample` on the whole signal (to float rounding).

    Parameters:
        orig_rate: input sample rate in Hz.
        new_rate: output sample rate in Hz (default 16 kHz).

    Examples:
        >>> import numpy as np, torch
        >>> from online_gim.streams.resample import resample
        >>> x = np.random.default_rng(0).standard_normal(44100).astype(np.float32)
        >>> r = StreamingResampler(44100)
        >>> y = np.concatenate([r.process(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        >>> whole = resample(torch.from_numpy(x), 44100, 16000).numpy()
        >>> bool(np.allclose(y, whole[:len(y)], atol=1e-4)), len(whole) - len(y)  # 20 ms still in flight
        (True, 320)
    """

    def __init__(self, orig_rate: int, new_rate: int = SAMPLE_RATE) -> None:
        from online_gim.streams.resample import Resampler

        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
        g = math.gcd(int(orig_rate), int(new_rate))
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self._o, self._n = self.orig_rate // g, self.new_rate // g
        self._resample = Resampler(self._o, self._n)  # builds the kernel once
        self._margin = math.ceil(self._resample.width / self._o) + 1  # input groups needed on each side of an output group
        self.reset()

    def reset(self) -> None:
        """Starts a new recording (as if the stream began here, preceded by silence)."""
        self._buffer = np.zeros(self._margin * self._o, dtype=np.float32)  # = the resampler's zero padding
        self._first_group = -self._margin  # stream group index of _buffer[0]
        self._next_group = 0  # next output group to emit

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feeds ``(k,)`` input samples; returns the ``(m,)`` output samples that are now complete."""
        import torch

        if self._o == self._n:
            return np.asarray(samples, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])
        last_complete = self._first_group + self._buffer.shape[0] // self._o - 1
        stop_group = last_complete - self._margin + 1  # emit groups [_next_group, stop_group)
        if stop_group <= self._next_group:
            return np.zeros(0, dtype=np.float32)
        begin = (self._next_group - self._margin - self._first_group) * self._o
        end = (stop_group + self._margin - self._first_group) * self._o
        with torch.no_grad():
            out = self._resample(torch.from_numpy(self._buffer[begin:end])).numpy()
        out = out[self._margin * self._n : (self._margin + stop_group - self._next_group) * self._n]
        self._next_group = stop_group
        keep_from = (self._next_group - self._margin - self._first_group) * self._o
        self._buffer = self._buffer[keep_from:]
        self._first_group += keep_from // self._o
        return np.ascontiguousarray(out, dtype=np.float32)


class MicrophoneSource:
    """A live input device as a 16 kHz mono stream, pushed into a ring buffer from PortAudio's callback.

    Parameters:
        device: input device name (a unique substring, as sounddevice matches it) or index;
            ``None`` = the default input device.
        samplerate: rate to open the device at; ``None`` = its native (default) rate. Audio is
            resampled to 16 kHz in any case.
        channels: channels to record (averaged to mono); ``None`` = 1 if the device accepts it, else
            all of its channels.
        blocksize: frames per callback (0 = whatever PortAudio finds best).
        latency: PortAudio latency (``"low"``, ``"high"`` or seconds).
        stall_seconds: no callback for this long counts as a lost device (a new stream gets at least
            ``OPEN_GRACE_SECONDS`` for its first block).
        backoff: first and longest wait between attempts to reopen a lost device, in seconds.
        source_id: the stream's name (default ``"mic:<device>"``, ``"mic:default"`` for the default input).

    Attributes (after :meth:`start`):
        device_name, device_index, input_rate, input_channels: what was opened.
        device_losses: times the device stopped delivering; ``reopens``: times it was reopened.
        last_error: the most recent device error, as text.
    """

    speed: float | None = None  # live: paces itself

    def __init__(
        self,
        device: str | int | None = None,
        *,
        samplerate: int | None = None,
        channels: int | None = None,
        blocksize: int = 0,
        latency: str | float | None = None,
        stall_seconds: float = 2.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        source_id: str | None = None,
    ) -> None:
        self.device = parse_device(device)
        self.samplerate = samplerate
        self.channels = channels
        self.blocksize = blocksize
        self.latency = latency
        self.stall_seconds = stall_seconds
        self.backoff = backoff
        self.source_id = source_id or f"mic:{self.device if self.device is not None else 'default'}"
        self.device_name: str | None = None
        self.device_index: int | None = None
        self.input_rate: int | None = None
        self.input_channels: int | None = None
        self.device_losses = 0
        self.reopens = 0
        self.last_error: str | None = None
        self._sd: Any = None
        self._stream: Any = None
        self._target: PushTarget | None = None
        self._resampler: StreamingResampler | None = None
        self._generation = 0  # which opening the callbacks belong to
        self._offset = 0  # samples pushed since the current opening
        self._last_callback = 0.0
        self._delivering = False  # whether the current opening has delivered audio yet
        self._finished = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    @property
    def files_skipped(self) -> int:
        return 0

    @property
    def running(self) -> bool:
        """Whether a device stream is open and delivering."""
        stream = self._stream
        return stream is not None and stream.active

    # ------------------------------------------------------------------ opening
    def resolve(self) -> dict[str, Any]:
        """Finds the input device; returns sounddevice's description of it.

        Raises:
            MicrophoneUnavailable: no PortAudio, no input device, or none matching ``device``.
        """
        sd = self._sd = self._sd or import_sounddevice()
        try:
            info = sd.query_devices(self.device, kind="input")
        except (ValueError, sd.PortAudioError):
            raise MicrophoneUnavailable(no_device_message(self.device, input_devices())) from None
        if info["max_input_channels"] < 1:
            raise MicrophoneUnavailable(no_device_message(self.device, input_devices()))
        return info

    def _open(self) -> None:
        """Opens and starts a stream on the device (a new recording)."""
        info = self.resolve()
        sd = self._sd
        rate = int(self.samplerate or info["default_samplerate"])
        channels = self.channels
        if channels is None:
            try:
                sd.check_input_settings(device=info["index"], channels=1, samplerate=rate, dtype="float32")
                channels = 1
            except (ValueError, sd.PortAudioError):
                channels = int(info["max_input_channels"])
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._offset = 0
            self._delivering = False
            self._finished.clear()
            if self._resampler is None or self._resampler.orig_rate != rate:
                self._resampler = StreamingResampler(rate)
            else:
                self._resampler.reset()

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            self._on_audio(generation, indata, status)

        try:
            stream = sd.InputStream(
                device=info["index"],
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=self.blocksize,
                latency=self.latency,
                callback=callback,
                finished_callback=self._finished.set,
            )
            self._last_callback = time.monotonic()
            stream.start()
        except (ValueError, sd.PortAudioError) as error:
            raise MicrophoneUnavailable(
                f"cannot open the audio input device {info['name']!r} at {rate} Hz, {channels} channel(s): {error}"
            ) from None
        self._stream = stream
        self.device_name = info["name"]
        self.device_index = int(info["index"])
        self.input_rate = rate
        self.input_channels = channels

    def start(self, target: PushTarget) -> MicrophoneSource:
        """Opens the device and starts pushing 16 kHz mono chunks into ``target``.

        Raises:
            MicrophoneUnavailable: the device cannot be found or opened (one sentence).
        """
        if self._target is not None:
            raise RuntimeError("the microphone source is already started")
        self._target = target
        self._open()
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog:{self.source_id}", daemon=True)
        self._watchdog.start()
        log.info("recording from %r at %d Hz, %d channel(s)", self.device_name, self.input_rate, self.input_channels)
        return self

    # ------------------------------------------------------------------ PortAudio's thread
    def _on_audio(self, generation: int, indata: np.ndarray, status: Any) -> None:
        """Called by PortAudio with ``(frames, channels)`` float32; never blocks on the learner."""
        target = self._target
        if target is None or generation != self._generation or self._closed.is_set():
            return
        self._last_callback = time.monotonic()
        self._delivering = True
        if status and status.input_overflow:
            target.counters.overflows += 1
        mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        samples = self._resampler.process(mono)
        if samples.shape[0] == 0:
            return
        chunk = AudioChunk(samples, utterance_id=f"{self.source_id}#{generation}", offset=self._offset)
        self._offset += samples.shape[0]
        target.push(chunk)

    # ------------------------------------------------------------------ device loss
    def _lost(self) -> str | None:
        """Why the current stream is no longer delivering, or ``None`` while it is."""
        stream = self._stream
        if stream is None:
            return "not open"
        if self._finished.is_set() or not stream.active:
            return "the stream stopped"
        silent = time.monotonic() - self._last_callback
        limit = self.stall_seconds if self._delivering else max(self.stall_seconds, OPEN_GRACE_SECONDS)
        if silent > limit:
            return f"no audio for {silent:.1f} s"
        return None

    def _watch(self) -> None:
        """Watchdog thread: detects a lost device and reopens it with exponential backoff."""
        while not self._closed.wait(0.1):
            reason = self._lost()
            if reason is None:
                continue
            self.device_losses += 1
            self.last_error = reason
            log.warning("microphone %r lost (%s); reopening", self.device_name, reason)
            self._close_stream()
            delay = self.backoff[0]
            while not self._closed.is_set():
                try:
                    self._refresh_devices()
                    self._open()
                except MicrophoneUnavailable as error:
                    self.last_error = str(error)
                    log.debug("reopening %r failed: %s", self.device_name, error)
                    if self._closed.wait(delay):
                        return
                    delay = min(delay * 2, self.backoff[1])
                    continue
                self.reopens += 1
                log.warning("microphone %r reopened", self.device_name)
                break

    def _refresh_devices(self) -> None:
        """Makes PortAudio list the devices again (a replugged device gets a new index)."""
        try:
            self._sd._terminate()
            self._sd._initialize()
        except Exception as error:  # noqa: BLE001 - a refresh failure shows up when opening
            log.debug("PortAudio re-initialisation failed: %s", error)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as error:  # noqa: BLE001 - a dead device may fail to close; it is gone anyway
            log.debug("closing the lost stream failed: %s", error)

    def close(self) -> None:
        """Stops recording and releases the device. Idempotent."""
        self._closed.set()
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(5.0)
        self._close_stream()

    def __enter__(self) -> MicrophoneSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What was opened and how it went, for the summary."""
        return {
            "device": self.device_name,
            "device_index": self.device_index,
            "input_rate": self.input_rate,
            "input_channels": self.input_channels,
            "device_losses": self.device_losses,
            "reopens": self.reopens,
            "last_error": self.last_error,
        }

