"""A cache of baseline results (``mfcc``, ``random``), keyed by everything they depend on.

The baselines of an evaluation do not learn, so on the same corpus, split, settings and code they
give the same numbers every time; a research loop that compares learners against them need not pay
for them again. A result is stored under the SHA-256 of a JSON key that holds: the method (name,
kind, configuration), the settings that change a baseline (train minutes, seed, frame budget,
probed modules), every segment of both splits and of the training stream (utterance id and stretch,
file size and modification time), the label files' sizes and modification times, the source of the
``online_gim`` and ``online_gim.streams`` packages, and the torch version. Any change to any of
them is a miss.

Entries are JSON files (``<key>.json``) written atomically (a temporary file renamed into place);
an unreadable entry is a miss. The folder is ``$ONLINE_GIM_CACHE/eval`` or
``~/.cache/online-gim/eval``; ``online-gim eval --no-cache`` bypasses it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from online_gim.evaluation.results import MethodResult
from online_gim.evaluation.split import Segment

log = logging.getLogger(__name__)

_PACKAGES = ("online_gim", "online_gim.streams")
"""Packages whose source is part of every key: the ``.py`` files under their folders (``online_gim/``
and ``streams/`` in the source tree; installed, the folder of ``online_gim`` holds the other)."""


@cache
def code_fingerprint() -> str:
    """SHA-256 of the source files of :data:`_PACKAGES` (paths and contents, in sorted order)."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        (folder,) = importlib.import_module(package).__path__
        for path in sorted(Path(folder).rglob("*.py")):
            digest.update(f"{package}/{path.relative_to(folder).as_posix()}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def segments_fingerprint(segments: Sequence[Segment]) -> list[list[Any]]:
    """Per segment: its id, stretch, and its file's path, size and modification time."""
    return [[s.id, s.start, s.stop, *_file_stamp(s.utterance.path)] for s in segments]


def label_fingerprint(folder: Path | None) -> list[list[Any]]:
    """Path, size and modification time of every file of the label folder (empty without one)."""
    return [] if folder is None else [_file_stamp(p) for p in sorted(folder.iterdir()) if p.is_file()]


def default_folder() -> Path:
    """``$ONLINE_GIM_CACHE/eval`` or ``~/.cache/online-gim/eval``."""
    root = os.environ.get("ONLINE_GIM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "online-gim") / "eval"


class ResultCache:
    """Baseline results on disk (module docstring).

    Parameters:
        folder: where the entries live (created on the first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """The entry name of a key (its parts are completed with the code and torch version)."""
        full = {**parts, "code": code_fingerprint(), "torch": torch.__version__}
        return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str) -> MethodResult | None:
        """The stored result, or ``None`` (absent or unreadable)."""
        path = self.folder / f"{key}.json"
        try:
            return MethodResult.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("evaluation cache entry %s is unreadable (%s); computing it again", path, error)
            return None

    def put(self, key: str, result: MethodResult) -> None:
        """Stores a result atomically; a failure to write is logged, not raised."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.folder, prefix=f".{key}.", suffix=".tmp", delete=False) as file:
                file.write(json.dumps(result.to_dict(), allow_nan=False))
            os.replace(file.name, self.folder / f"{key}.json")
        except OSError as error:
            log.warning("cannot write the evaluation cache in %s: %s", self.folder, error)
