"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix.

:func:`write_atomic` writes to a temporary file in the target's directory (same file system, so
the rename is atomic), flushes and fsyncs it, renames it over the target and fsyncs the directory
(so that the rename itself survives a power cut). A crash at any point leaves the old file intact
and at worst a temporary file ``<name>.<pid>.tmp`` next to it (the checkpoint store removes its
own when it next opens the directory).

Fault injection: with ``ONLINE_GIM_CHECKPOINT_WRITE_DELAY=S`` in the environment, every write
pauses ``S`` seconds half-way through the temporary file, so that tests can kill or signal a
process while a checkpoint is being written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

WRITE_DELAY_ENV = "ONLINE_GIM_CHECKPOINT_WRITE_DELAY"
"""Seconds to pause in the middle of every atomic write (tests only; unset in normal use)."""

TEMPORARY_SUFFIX = ".tmp"
"""The temporary file of ``path`` is ``<path>.<pid>.tmp``."""


def write_atomic(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically and durably.

    Raises:
        OSError: the write failed (disk full, permissions); ``path`` is unchanged and the temporary
            file is removed.
    """
    temporary = path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    view = memoryview(data)
    half = len(view) // 2
    try:
        with open(temporary, "wb") as file:
            file.write(view[:half])
            _pause_for_tests(file)
            file.write(view[half:])
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Makes renames and removals in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _pause_for_tests(file) -> None:
    delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
    if delay > 0:
        file.flush()  # the half-written temporary file is visible on disk during the pause
        time.sleep(delay)
