"""Shared pytest fixtures (keep them generic: several test modules use them), and the suite's
settings for a shared machine: one torch intra-op thread, deadlines from the measured speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread, in this process and the commands the tests start (they inherit it), unless
# the caller chose: on a two-core machine whose cores are busy with another job, two threads that
# spin-wait for each other run a step ten to forty times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test, whatever the caller chose for the suite: small tensors
    run faster on one, results do not depend on the core count, and a busy machine does not stall it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SYNTH_SPEAKERS = 6
SYNTH_UTTERANCES = 6
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic corpus (6 speakers x 6 utterances, seed 0), generated once per session.

    Returns the ``online_gim.streams.corpora.synth.SynthCorpus``; its ``root`` holds LibriSpeech's layout
    (``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac``, ``*.trans.txt``) and ``labels_dir`` (=
    ``root / "labels"``) the GIM/CPC label folder. Treat it as read-only (copy before writing).
    Skips when espeak-ng is not installed.
    """
    from online_gim.streams.corpora import espeak
    from online_gim.streams.corpora.synth import synthesize_corpus

    if not espeak.available():
        pytest.skip(f"espeak-ng is not installed ({espeak.INSTALL_HINT})")
    root = tmp_path_factory.mktemp("synth-corpus")
    return synthesize_corpus(root, speakers=SYNTH_SPEAKERS, utterances_per_speaker=SYNTH_UTTERANCES, seed=SYNTH_SEED)


@pytest.fixture(scope="session")
def synth_corpus_dir(synth_corpus) -> Path:
    """Root folder of the session's small synthetic corpus (see ``synth_corpus``); labels in ``<root>/labels``."""
    return Path(synth_corpus.root)


SMALL_LEARNER_YAML = """
encoder:
  convs:
    - {channels: 32, kernel: 10, stride: 5, padding: 2}
    - {channels: 32, kernel: 8, stride: 4, padding: 2}
    - {channels: 32, kernel: 4, stride: 2, padding: 2}
    - {channels: 32, kernel: 4, stride: 2, padding: 2}
    - {channels: 32, kernel: 4, stride: 2, padding: 1}
  gru_hidden: 32
memory: {capacity: 256, writes_per_window: 32}
"""
"""A small learner for fast command-line tests: the GIM audio stack with 32 channels (20480-sample windows)."""


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YAML preset of a small learner (``SMALL_LEARNER_YAML``) for ``online-gim listen --config``."""
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(SMALL_LEARNER_YAML)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test's timeout (its ``timeout`` mark, else the ini's) is set for the idle development
    machine: stretch it by this machine's measured slowdown (``machine_speed``)."""
    if not items:
        return
    from machine_speed import slowdown

    factor = slowdown()
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker is not None and marker.args else default
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(seconds * factor), append=False)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The slowdown the deadlines were stretched by, with the results (what a slow run is judged by)."""
    from machine_speed import slowdown

    if slowdown.cache_info().currsize:  # measured: tests were collected
        terminalreporter.write_line(f"machine slowdown {slowdown():.1f}x: timeouts and waits stretched by it")
