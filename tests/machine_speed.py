"""How fast this machine runs the learner right now, for the suite's wall-clock deadlines.

A deadline in a test (pytest-timeout's, a subprocess timeout, a wait for a listening process) is
written for the idle two-core machine the suite was developed on; :func:`scaled` stretches it by
:func:`slowdown`, the measured time of a small learner's step now over its time there
(:data:`REFERENCE_STEP_SECONDS`). On a machine whose cores are busy with another job, or a slower
one, every deadline grows with what the measurement shows, so that only a test that really hangs
runs out of time. ``conftest.py`` applies it to every test's timeout.

The measurement: a few steps of the small learner (``SMALL_LEARNER_YAML``) in this process, with
its torch thread settings (so that a machine where threads spin-wait against another job measures
as slow as it is), taken once per test session, when the tests are collected.
"""

from __future__ import annotations

import functools
import time

REFERENCE_STEP_SECONDS = 0.025
"""Seconds per window of the small learner on the idle two-core development machine, one torch
thread (the suite's setting, ``conftest.py``; rounded down from the best of repeated measurements:
a smaller value only makes every deadline more generous)."""

STEPS = 3
"""Windows timed (after one warm-up window, whose lazy initialisation is not timed)."""


def step_seconds() -> float:
    """Seconds per window of the small learner, measured now."""
    import torch
    import yaml

    from conftest import SMALL_LEARNER_YAML
    from online_gim.config import LearnerConfig
    from online_gim.learner import OnlineLearner
    from online_gim.streams.window import AudioWindow

    learner = OnlineLearner(LearnerConfig.model_validate(yaml.safe_load(SMALL_LEARNER_YAML)))
    generator = torch.Generator().manual_seed(0)
    windows = [AudioWindow(torch.randn(20480, generator=generator) * 0.1, start_sample=i * 20480) for i in range(STEPS + 1)]
    learner.step(windows[0])
    started = time.perf_counter()
    for window in windows[1:]:
        learner.step(window)
    return (time.perf_counter() - started) / STEPS


@functools.cache
def slowdown() -> float:
    """How many times slower than the reference machine this one runs now (at least 1)."""
    return max(1.0, step_seconds() / REFERENCE_STEP_SECONDS)


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on the reference machine, for this machine as it runs now."""
    return seconds * slowdown()
