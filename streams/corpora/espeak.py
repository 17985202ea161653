"""A small ctypes binding to espeak-ng's C library (``libespeak-ng.so.1``), for labelled synthesis.

Only what the synthetic corpus needs: synchronous synthesis into memory with phoneme events, voice
selection by name (``"en-us+m3"``: voice, ``+``, variant from ``espeak-ng-data/voices/!v``) and the
prosody parameters rate, pitch and pitch range.

Layout of the C types (checked against ``speak_lib.h`` of libespeak-ng-dev 1.51, API revision 12,
on x86-64; ctypes reproduces the C alignment, so it holds on other ABIs too)::

    typedef struct {
        espeak_EVENT_TYPE type;          // int enum             offset  0
        unsigned int unique_identifier;  //                      offset  4
        int text_position;               // characters from text start   8
        int length;                      // word length (WORD events)   12
        int audio_position;              // milliseconds               16
        int sample;                      // sample index             20
        void* user_data;                 //                          24
        union { int number; const char *name; char string[8]; } id;  // 32  (sizeof 40)
    } espeak_EVENT;
    typedef int (t_espeak_callback)(short*, int, espeak_EVENT*);

``sample`` is, in espeak-ng's ``MarkerEvent``, the absolute position (in output samples at the
library's native rate, counted from the start of the ``espeak_Synth`` call) at which the event
happens; ``audio_position`` is the same in whole milliseconds. A phoneme event (type 7, enabled
by ``espeakINITIALIZE_PHONEME_EVENTS``) marks the START of a phoneme; ``id.string`` holds its
mnemonic (espeak's ASCII phoneme name, up to 8 bytes, zero-terminated unless all 8 are used).
Pause phonemes (``_``, ``_:``, ``_!`` ...) are reported as phonemes too.

The library is process-global state (one voice, one parameter set, one callback), so every call
of ``synthesize`` goes through one lock; it is safe to call from several threads of one process,
one synthesis at a time.

Reproducibility. espeak-ng's wave generator keeps state from one synthesis to the next (pitch
phase, flutter index, sample counters; all ``static`` in ``wavegen.c``, not resettable through the
API, and ``espeak_Terminate`` + ``espeak_Initialize`` hangs in synchronous mode), so the same call
made twice in one process gives slightly different samples and phoneme positions (measured:
a few samples of timing, different waveforms). espeak-ng 1.51 also draws the noise of breathy
voices from libc ``rand()``. ``IsolatedSynthesizer`` makes synthesis a pure function of its
arguments: a worker process (``python -m online_gim.streams.corpora.espeak --worker``, single-threaded,
library initialised but never used) forks a fresh child for every call, and the child seeds
``rand()`` with ``srand(seed)`` and synthesises from the pristine state. Forking a small process
costs about a millisecond; same arguments -> byte-identical samples, in any order, in any process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INSTALL_HINT = "apt-get install espeak-ng libespeak-ng1"
"""What to run when the library is missing (the Debian/Ubuntu package names)."""

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options
ESPEAK_INITIALIZE_PHONEME_EVENTS = 0x0001
ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
# espeak_EVENT_TYPE
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_SENTENCE = 2
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7
# espeak_POSITION_TYPE
POS_CHARACTER = 1
# espeak_Synth flags
ESPEAK_CHARS_UTF8 = 1
# espeak_PARAMETER
ESPEAK_RATE = 1
ESPEAK_VOLUME = 2
ESPEAK_PITCH = 3
ESPEAK_RANGE = 4
ESPEAK_WORDGAP = 7
ESPEAK_INTONATION = 9
# espeak_ERROR
EE_OK = 0

RATE_MINIMUM = 80
RATE_MAXIMUM = 450
RATE_NORMAL = 175


class EspeakError(RuntimeError):
    """espeak-ng failed (unknown voice, synthesis error)."""


class EspeakNotAvailable(EspeakError):
    """The espeak-ng shared library or its data could not be loaded."""


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme of a synthesis: espeak's mnemonic and the sample (native rate) where it starts."""

    name: str
    sample: int


@dataclass(frozen=True)
class WordEvent:
    """Start of a word: sample (native rate), character offset in the text and length in characters."""

    sample: int
    text_position: int
    length: int


@dataclass(frozen=True)
class Synthesis:
    """The result of one ``synthesize`` call.

    Attributes:
        samples: ``(n,)`` int16 waveform at ``sample_rate``.
        sample_rate: espeak-ng's native output rate (22050 Hz for its formant voices).
        phonemes: phoneme events in order; phoneme ``i`` lasts from ``phonemes[i].sample`` to
            ``phonemes[i + 1].sample`` (the last one to the end of ``samples``).
        words: word events in order.
    """

    samples: np.ndarray
    sample_rate: int
    phonemes: tuple[PhonemeEvent, ...]
    words: tuple[WordEvent, ...]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


class _Library:
    """The loaded and initialised library (one per process)."""

    def __init__(self) -> None:
        self.lib = _load_library()
        self.chunks: list[bytes] = []
        self.events: list[tuple[int, int, int, int, bytes]] = []
        self.callback = _SynthCallback(self._on_synth)  # kept referenced: C holds the pointer
        self.libc = ctypes.CDLL(None)
        lib = self.lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        self.libc.srand.argtypes = [ctypes.c_uint]
        self.libc.srand.restype = None
        rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
            ESPEAK_INITIALIZE_PHONEME_EVENTS | ESPEAK_INITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise EspeakNotAvailable(
                f"espeak-ng could not initialise (its espeak-ng-data is missing?); run `{INSTALL_HINT}`"
            )
        self.sample_rate = int(rate)
        lib.espeak_SetSynthCallback(self.callback)
        data_path = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data_path)) or b"").decode()
        self.data_path = Path((data_path.value or b"").decode()) if data_path.value else None

    def _on_synth(self, wav, count, events) -> int:  # noqa: ANN001 (ctypes types)
        if wav and count > 0:
            self.chunks.append(ctypes.string_at(wav, 2 * count))
        if events:
            index = 0
            while True:
                event = events[index]
                if event.type == EVENT_LIST_TERMINATED:
                    break
                name = bytes(event.id.string) if event.type == EVENT_PHONEME else b""
                self.events.append((event.type, event.sample, event.text_position, event.length, name))
                index += 1
        return 0


_LOCK = threading.RLock()
_LIBRARY: _Library | None = None


def _load_library() -> ctypes.CDLL:
    names = ["libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.1.dylib"]
    found = ctypes.util.find_library("espeak-ng")
    if found:
        names.append(found)
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as error:
            errors.append(str(error))
    raise EspeakNotAvailable(f"the espeak-ng library (libespeak-ng.so.1) is not installed; run `{INSTALL_HINT}`")


def _library() -> _Library:
    global _LIBRARY
    with _LOCK:
        if _LIBRARY is None:
            _LIBRARY = _Library()
        return _LIBRARY


def available() -> bool:
    """Whether the espeak-ng library loads and initialises in this process."""
    try:
        _library()
    except EspeakNotAvailable:
        return False
    return True


def native_sample_rate() -> int:
    """espeak-ng's output sample rate in Hz (22050 for the formant synthesiser)."""
    return _library().sample_rate


def library_version() -> str:
    """The library's version string (``espeak_Info``), e.g. ``"1.51"``."""
    return _library().version


def data_path() -> Path | None:
    """The ``espeak-ng-data`` directory the library uses."""
    return _library().data_path


def list_variants() -> list[str]:
    """Names of the installed voice variants (files in ``espeak-ng-data/voices/!v``), sorted."""
    path = data_path()
    if path is None:
        return []
    folder = path / "voices" / "!v"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def synthesize(
    text: str,
    *,
    voice: str = "en-us",
    rate: int = RATE_NORMAL,
    pitch: int = 50,
    pitch_range: int = 50,
    word_gap: int = 0,
    seed: int = 0,
) -> Synthesis:
    """Synthesise ``text`` (plain UTF-8, no SSML) into memory, with phoneme and word events.

    Args:
        text: what to say; punctuation shapes pauses and intonation as usual.
        voice: a voice name or language (``"en-us"``, ``"en-gb-scotland"``), optionally with a
            variant: ``"en-us+f2"``.
        rate: words per minute, 80..450.
        pitch: base pitch 0..100 (50 = the voice's normal).
        pitch_range: pitch range 0..100 (0 = monotone, 50 = normal).
        word_gap: extra pause between words, in units of 10 ms.
        seed: seeds libc ``rand()``, which espeak-ng uses for breath and Klatt noise.

    Raises:
        EspeakNotAvailable: the library is missing.
        EspeakError: the voice is unknown or synthesis failed.
    """
    if not RATE_MINIMUM <= rate <= RATE_MAXIMUM:
        raise ValueError(f"rate must be in {RATE_MINIMUM}..{RATE_MAXIMUM} words per minute, got {rate}")
    for name, value in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= value <= 100:
            raise ValueError(f"{name} must be in 0..100, got {value}")
    with _LOCK:
        library = _library()
        lib = library.lib
        if lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            raise EspeakError(f"espeak-ng has no voice {voice!r}")
        for parameter, value in (
            (ESPEAK_RATE, rate),
            (ESPEAK_PITCH, pitch),
            (ESPEAK_RANGE, pitch_range),
            (ESPEAK_VOLUME, 100),
            (ESPEAK_WORDGAP, word_gap),
        ):
            if lib.espeak_SetParameter(parameter, int(value), 0) != EE_OK:
                raise EspeakError(f"espeak-ng rejected parameter {parameter} = {value}")
        library.chunks = []
        library.events = []
        library.libc.srand(int(seed) & 0xFFFFFFFF)
        data = text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(data, len(data))
        status = lib.espeak_Synth(buffer, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if status != EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status}")
        lib.espeak_Synchronize()
        samples = np.frombuffer(b"".join(library.chunks), dtype="<i2").astype(np.int16)
        events = library.events
        library.chunks = []
        library.events = []
        sample_rate = library.sample_rate
    phonemes = tuple(
        PhonemeEvent(name.split(b"\0", 1)[0].decode("utf-8", "replace"), int(sample))
        for kind, sample, _, _, name in events
        if kind == EVENT_PHONEME
    )
    words = tuple(
        WordEvent(int(sample), int(position), int(length))
        for kind, sample, position, length, _ in events
        if kind == EVENT_WORD
    )
    return Synthesis(samples=samples, sample_rate=sample_rate, phonemes=phonemes, words=words)


# --------------------------------------------------------------------------------------------
# Reproducible synthesis: a worker process that forks a pristine child per call.

_HEADER = struct.Struct("<Q")


def _send(stream, obj) -> None:  # noqa: ANN001
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exactly(stream, size: int) -> bytes | None:  # noqa: ANN001
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(stream):  # noqa: ANN001, ANN202
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(stream, _HEADER.unpack(header)[0])
    if data is None:
        return None
    return pickle.loads(data)


def _synthesize_in_fork(request: dict) -> bytes:
    """Run one ``synthesize`` in a forked child; returns the pickled ``("ok", Synthesis)`` or error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: synthesise from the parent's pristine library state, then exit
        code = 0
        try:
            os.close(read_fd)
            try:
                reply = ("ok", synthesize(**request))
            except Exception as error:  # noqa: BLE001 (sent back to the caller)
                reply = ("error", type(error).__name__, str(error))
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(1 << 20):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data or status != 0:
        return pickle.dumps(("error", "EspeakError", f"the synthesis process died (wait status {status})"))
    return data


def _worker_main() -> int:
    """Serve synthesis requests on stdin/stdout (length-prefixed pickles); see ``IsolatedSynthesizer``."""
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the library prints goes to stderr, never into the protocol
    protocol_in = sys.stdin.buffer
    try:
        library = _library()
    except EspeakNotAvailable as error:
        _send(protocol_out, ("unavailable", str(error)))
        return 1
    _send(protocol_out, ("ready", library.sample_rate, library.version, library.data_path))
    while True:
        request = _receive(protocol_in)
        if request is None:
            return 0
        data = _synthesize_in_fork(request)
        protocol_out.write(_HEADER.pack(len(data)))
        protocol_out.write(data)
        protocol_out.flush()


_ERRORS = {"EspeakError": EspeakError, "EspeakNotAvailable": EspeakNotAvailable, "ValueError": ValueError}


class IsolatedSynthesizer:
    """Bit-reproducible synthesis: every call runs in a fresh fork of a never-used library.

    One instance owns one worker process and serves one call at a time (calls from several
    threads are serialised); use several instances to synthesise in parallel. Close it (or use it
    as a context manager) to end the worker.

    Raises ``EspeakNotAvailable`` on construction when the library is missing.
    """

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        env["OMP_NUM_THREADS"] = "1"
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "online_gim.streams.corpora.espeak", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        hello = _receive(self._process.stdout)
        if hello is None or hello[0] != "ready":
            self.close()
            message = hello[1] if hello else f"the espeak-ng worker failed to start; is `{INSTALL_HINT}` done?"
            raise EspeakNotAvailable(message)
        _, self.sample_rate, self.version, self.data_path = hello

    def synthesize(self, text: str, **options) -> Synthesis:
        """Like the module's ``synthesize`` (same arguments), but a pure function of its arguments."""
        with self._lock:
            if self._process.poll() is not None:
                raise EspeakError("the espeak-ng worker process has exited")
            _send(self._process.stdin, dict(text=text, **options))
            reply = _receive(self._process.stdout)
        if reply is None:
            raise EspeakError("the espeak-ng worker process died")
        if reply[0] == "ok":
            return reply[1]
        raise _ERRORS.get(reply[1], EspeakError)(reply[2])

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                process.stdin.close()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> IsolatedSynthesizer:
        return self

    def __exit__(self, *exc_info) -> None:  # noqa: ANN002
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        # Serve from the importable module (not ``__main__``) so that results pickle by their
        # real class path ``online_gim.streams.corpora.espeak.Synthesis``.
        from online_gim.streams.corpora import espeak as _module

        sys.exit(_module._worker_main())
    print("usage: python -m online_gim.streams.corpora.espeak --worker  (internal: serves IsolatedSynthesizer)", file=sys.stderr)
    sys.exit(2)
