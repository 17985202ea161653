"""Audio and video sources: each a small class behind :class:`~streams.sources.base.AudioSource`.

- :class:`LibriSpeechReplay` (``librispeech.py``): a LibriSpeech tree as one continuous stream.
- :class:`FileSource` (``file.py``): any audio file or URL PyAV opens, decoded in chunks.
- :class:`SynthSource` (``synth.py``): the default synthetic espeak-ng corpus, looped.
- :class:`VideoFrameSource` (``video.py``): video frames with timestamps (not an audio source).
- the microphone (``mic.py``) lives beside them.

Names are imported lazily so that importing one source does not import the others' libraries.
"""

from __future__ import annotations

import importlib

from streams.sources.base import AudioSource, parse_speed

_LAZY = {
    "LibriSpeechReplay": "streams.sources.librispeech",
    "ReplayPosition": "streams.sources.librispeech",
    "FileSource": "streams.sources.file",
    "SynthSource": "streams.sources.synth",
    "VideoFrameSource": "streams.sources.video",
    "VideoFrame": "streams.sources.video",
}

__all__ = ["AudioSource", "parse_speed", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
