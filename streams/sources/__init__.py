"""Audio and video sources: each a small class behind :class:`~online_gim.streams.sources.base.AudioSource`.

- :class:`LibriSpeechReplay` (``librispeech.py``): a LibriSpeech tree as one continuous stream.
- :class:`FileSource` (``file.py``): any audio file or URL PyAV opens, decoded in chunks.
- :class:`SynthSource` (``synth.py``): the default synthetic espeak-ng corpus, looped.
- :class:`VideoFrameSource` (``video.py``): video frames with timestamps (not an audio source).
- the microphone (``mic.py``) lives beside them.

Names are imported lazily so that importing one source does not import the others' libraries.
"""

from __future__ import annotations

import importlib

from online_gim.streams.sources.base import AudioSource, parse_speed

_LAZY = {
    "LibriSpeechReplay": "online_gim.streams.sources.librispeech",
    "ReplayPosition": "online_gim.streams.sources.librispeech",
    "FileSource": "online_gim.streams.sources.file",
    "SynthSource": "online_gim.streams.sources.synth",
    "VideoFrameSource": "online_gim.streams.sources.video",
    "VideoFrame": "online_gim.streams.sources.video",
}

__all__ = ["AudioSource", "parse_speed", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
