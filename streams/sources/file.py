"""Any audio file or URL that PyAV (FFmpeg) can open, decoded in chunks, as a 16 kHz mono stream.

wav, flac, mp3, ogg/opus, m4a, the audio track of an mp4 or mkv, an http(s) URL: the file is
demuxed and decoded packet by packet (never the whole file in memory) and resampled to 16 kHz with
PyAV's ``AudioResampler`` (FFmpeg's swresample). Mono and stereo are downmixed by averaging the
channels; more channels (5.1 ...) with FFmpeg's standard downmix matrix. Non-finite samples are
passed through and counted (``samples_nonfinite``), as in the LibriSpeech replay.

Errors are clear and name the file. When the source is created: a missing local file is a
``FileNotFoundError``; an empty file, one FFmpeg cannot open, or one without an audio track an
:class:`AudioFileError`. While decoding: data that turns out corrupt (a damaged or truncated file)
ends the stream: what was decoded before plays, then :class:`AudioFileError` is raised from the
iterator (the feeder hands it to the consumer as ``StreamError``), unless FFmpeg itself recovers
(it often resynchronises past a damaged frame; then the stream just goes on). A file from which
nothing at all decodes (random bytes with an audio extension) raises :class:`AudioFileError` too.

Chunks carry ``utterance_id`` = the file name (one recording), no speaker, no phones.

Usage::

    source = FileSource("talk.mp3", speed=None)            # None = as fast as decoding goes
    for chunk in source:
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from online_gim.streams.chunk import AudioChunk
from online_gim.streams.sources.base import DEFAULT_CHUNK_SAMPLES, AudioSource
from online_gim.streams.window import SAMPLE_RATE

log = logging.getLogger(__name__)


class AudioFileError(ValueError):
    """A file or URL that is not decodable audio (not a media file, no audio track, corrupt data)."""


def _is_url(location: str) -> bool:
    return "://" in location


def _name_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1] if _is_url(location) else Path(location).name


class FileSource(AudioSource):
    """An audio file or URL as a 16 kHz mono stream.

    Parameters:
        location: a path or a URL FFmpeg understands.
        speed: pace for the feeder in multiples of real time (default 1.0); ``None`` = max speed.
        loop: play the file again and again.
        chunk_samples: samples per chunk.
        stream_index: which audio track (default: the first).
        source_id: the stream's name (default ``file:<name>``).

    Raises:
        FileNotFoundError: a local path that does not exist.
        AudioFileError: FFmpeg cannot open it, or it has no audio track.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        stream_index: int = 0,
        source_id: str | None = None,
    ) -> None:
        self.location = str(location)
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (max), got {speed!r}")
        if chunk_samples <= 0:
            raise ValueError("chunk_samples must be positive")
        self.speed = speed
        self.loop = loop
        self.chunk_samples = chunk_samples
        self.stream_index = stream_index
        self.name = _name_of(self.location)
        self.source_id = source_id or f"file:{self.name}"
        self.samples_nonfinite = 0
        self._container = None
        self._closed = False
        container = self._open()  # fail early with a clear error
        stream = container.streams.audio[self.stream_index]
        self.input_rate: int = stream.rate
        self.input_channels: int = stream.channels
        self.duration_seconds: float | None = (
            float(container.duration) / 1_000_000 if container.duration is not None else None
        )
        container.close()

    def _open(self):
        import av

        if not _is_url(self.location) and not Path(self.location).exists():
            raise FileNotFoundError(f"audio file {self.location!r} does not exist")
        if not _is_url(self.location) and Path(self.location).is_dir():
            raise AudioFileError(f"{self.location!r} is a directory, not an audio file")
        if not _is_url(self.location) and Path(self.location).stat().st_size == 0:
            raise AudioFileError(f"audio file {self.location!r} is empty")
        try:
            container = av.open(self.location, mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise AudioFileError(f"cannot open {self.location!r} as audio: {error}") from error
        if len(container.streams.audio) <= self.stream_index:
            container.close()
            what = "no audio track" if not container.streams.audio else f"no audio track {self.stream_index}"
            raise AudioFileError(f"{self.location!r} has {what}")
        return container

    def remaining_seconds(self) -> float | None:
        """The file's duration as its container states it (``None`` when looping or not stated)."""
        return None if self.loop else self.duration_seconds

    def __iter__(self) -> Iterator[AudioChunk]:
        while not self._closed:
            played = 0
            for chunk in self._decode_once(0):  # every pass is a new span of the recording
                played += len(chunk)
                yield chunk
            if not self.loop or self._closed or played == 0:
                return

    def _decode_once(self, offset: int) -> Iterator[AudioChunk]:
        import av

        container = self._open()
        self._container = container
        try:
            stream = container.streams.audio[self.stream_index]
            downmix_by_mean = (stream.channels or 1) <= 2
            resampler = av.AudioResampler(
                format="fltp", layout=None if downmix_by_mean else "mono", rate=SAMPLE_RATE
            )
            pending: list[np.ndarray] = []
            pending_samples = 0
            failure: list[AudioFileError] = []

            def frames() -> Iterator[np.ndarray]:
                try:
                    for packet in container.demux(stream):
                        for frame in packet.decode():
                            for out in resampler.resample(frame):
                                yield out.to_ndarray()
                    for out in resampler.resample(None):
                        yield out.to_ndarray()
                except av.FFmpegError as error:
                    seconds = (offset + pending_samples) / SAMPLE_RATE
                    failure.append(
                        AudioFileError(f"corrupt audio data in {self.location!r} after {seconds:.2f} s: {error}")
                    )

            for planes in frames():
                if self._closed:
                    return
                mono = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
                pending.append(np.asarray(mono, dtype=np.float32))
                pending_samples += mono.shape[0]
                while pending_samples >= self.chunk_samples:
                    joined = np.concatenate(pending)
                    chunk, rest = joined[: self.chunk_samples], joined[self.chunk_samples :]
                    pending, pending_samples = [rest], rest.shape[0]
                    yield self._chunk(chunk, offset)
                    offset += chunk.shape[0]
            if pending_samples:
                yield self._chunk(np.concatenate(pending), offset)
                offset += pending_samples
            if failure:
                raise failure[0]
            if offset == 0:
                raise AudioFileError(f"no audio could be decoded from {self.location!r}")
        finally:
            container.close()
            self._container = None

    def _chunk(self, samples: np.ndarray, offset: int) -> AudioChunk:
        bad = int(samples.shape[0] - np.count_nonzero(np.isfinite(samples)))
        if bad:
            if self.samples_nonfinite == 0:
                log.warning("%s has non-finite samples (passed through, counted)", self.location)
            self.samples_nonfinite += bad
        return AudioChunk(samples, utterance_id=self.name, offset=offset)

    def close(self) -> None:
        self._closed = True
