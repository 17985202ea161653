"""online-gim's learner, for use from Python: streaming Greedy InfoMax / CLAPP.

What a notebook starts from (examples in the README, section "From Python")::

    import online_gim

    config = online_gim.load_preset("clapp_eprop")        # or online_gim.LearnerConfig(...), load_config(path)
    learner = online_gim.OnlineLearner(config)
    for window in online_gim.file_windows("talk.wav", config.window):
        report = learner.step(window)                      # one local update per window
    features = online_gim.embed_file(learner, "talk.wav")  # (frames, C) float32, top module

The names are imported on first use, so that ``import online_gim`` (and the command line, which
imports submodules) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from online_gim.audio_files import decode_file, embed_file, file_windows
    from online_gim.config import LearnerConfig, load_config, load_preset, preset_names
    from online_gim.learner import OnlineLearner
    from online_gim.report import StepReport
    from online_gim.state.export import Encoder

_EXPORTS = {
    "OnlineLearner": "online_gim.learner",
    "StepReport": "online_gim.report",
    "LearnerConfig": "online_gim.config",
    "load_config": "online_gim.config",
    "load_preset": "online_gim.config",
    "preset_names": "online_gim.config",
    "Encoder": "online_gim.state.export",
    "decode_file": "online_gim.audio_files",
    "file_windows": "online_gim.audio_files",
    "embed_file": "online_gim.audio_files",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'online_gim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
