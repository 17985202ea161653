"""A state directory: the last K checkpoints of a learner, atomic, checksummed, with a manifest.

Layout of a state directory::

    DIR/manifest.json                              which checkpoints exist, oldest first, and the newest
    DIR/ckpt-00000012-3f9a0c1b2d4e5f60.safetensors one checkpoint: sequence number and sha256 prefix
    DIR/lock                                       held (flock) by the process that writes DIR

A checkpoint file is a safetensors file: the tree's tensors and numpy arrays as tensors, and in its
metadata the format name, the format version and the rest of the tree as JSON (:mod:`.codec`).
Nothing is unpickled on load. The manifest (JSON) has the format version and, per checkpoint, the
file name, its sha256 and size, the sequence number, the time it was written and a small ``info``
dict (model step, stream position) for people and tools.

Saving writes the checkpoint atomically (:func:`.atomic.write_atomic`), then the manifest, then
removes what the manifest no longer lists: checkpoints beyond the newest ``keep``, files of an
interrupted save, checkpoints found corrupt. A crash at any moment leaves the previous manifest and
every checkpoint it lists intact.

Loading takes the newest checkpoint whose sha256 matches; a corrupt, truncated or missing one is
reported (a warning naming it) and the previous one is tried. A checkpoint or manifest of another
format version is refused (:class:`CheckpointIncompatible`): an old learner must not half-read a
new format. If the manifest itself is lost or damaged, the checkpoints are recovered from the file
names, whose sha256 prefix verifies them.

Usage::

    store = CheckpointStore("state/", keep=3)           # creates it, takes the lock
    checkpoint = store.load_newest()                    # None when empty
    if checkpoint is not None:
        learner.load_state_dict(checkpoint.state["learner"])
    store.save({"learner": learner.state_dict()}, info={"model_step": learner.updates})
    store.close()
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch

from online_gim.state.atomic import is_temporary, write_atomic
from online_gim.state.codec import decode, encode

log = logging.getLogger(__name__)

FORMAT = "online-gim-checkpoint"
FORMAT_VERSION = 2
"""Version of the checkpoint and manifest format written (2: large float tensors packed, see
:mod:`.codec`)."""

READABLE_VERSIONS = (1, 2)
"""Versions read; another one is refused on load."""

MANIFEST = "manifest.json"
LOCK = "lock"
_NAME = re.compile(r"^ckpt-(\d{8})-([0-9a-f]{16})\.safetensors$")
_PREFIX = 16  # hex digits of the sha256 in a checkpoint's file name


class CheckpointError(Exception):
    """A state directory cannot be used; the message says why and what to do."""


class CheckpointIncompatible(CheckpointError):
    """A checkpoint or manifest of another format version."""


class NoValidCheckpoint(CheckpointError):
    """The state directory has checkpoints, but none of them is intact."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint as the manifest lists it.

    Attributes:
        file: file name inside the state directory.
        sha256: hex digest of the whole file.
        bytes: file size.
        sequence: 1, 2, ... in the order of saving (the newest has the highest).
        written_at: UTC time of the save, ISO 8601.
        info: small facts for people and tools (model step, stream position).
    """

    file: str
    sha256: str
    bytes: int
    sequence: int
    written_at: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its manifest entry and the decoded state tree."""

    entry: CheckpointEntry
    state: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one state directory.

    Parameters:
        directory: the state directory (created unless ``readonly``).
        keep: checkpoints kept (the newest ``keep``), at least 1.
        readonly: only read (``online-gim export``): no lock, no writes; a writer may be running.

    Raises:
        CheckpointError: the directory cannot be created or is locked by another process.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, readonly: bool = False) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.readonly = readonly
        self._lock_file = None
        self._bad: set[str] = set()  # checkpoints found corrupt; dropped from the manifest on the next save
        if readonly:
            if not self.directory.is_dir():
                raise CheckpointError(f"state directory {self.directory} does not exist")
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / LOCK, "a+")
        except OSError as error:
            raise CheckpointError(f"cannot use {self.directory} as a state directory: {error.strerror or error}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise CheckpointError(f"state directory {self.directory} is in use by another online-gim process") from None

    def close(self) -> None:
        """Releases the lock (idempotent)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the manifest
    def entries(self) -> list[CheckpointEntry]:
        """The checkpoints, oldest first: the manifest's list, or (manifest lost or damaged) the
        intact checkpoint files found in the directory.

        Raises:
            CheckpointIncompatible: the manifest has another format version.
        """
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError("not an online-gim manifest")
            version = manifest.get("version")
            if version not in READABLE_VERSIONS:
                raise CheckpointIncompatible(
                    f"{path} has format version {version}; this online-gim reads versions {_readable()}"
                )
            return [CheckpointEntry(**item) for item in manifest["checkpoints"]]
        except FileNotFoundError:
            if not self._checkpoint_files():
                return []
            log.warning("%s is missing; recovering the checkpoints from their files", path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s is unreadable (%s); recovering the checkpoints from their files", path, error)
        return self._recover()

    def _checkpoint_files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def _recover(self) -> list[CheckpointEntry]:
        """Entries for the checkpoint files whose content matches the sha256 prefix in their name."""
        entries = []
        for path in self._checkpoint_files():
            sequence, prefix = _NAME.match(path.name).groups()
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if not digest.startswith(prefix):
                log.warning("checkpoint %s is corrupt (its content does not match its name); skipping it", path)
                self._bad.add(path.name)
                continue
            written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            entries.append(CheckpointEntry(path.name, digest, len(data), int(sequence), written))
        return entries

    def _write_manifest(self, entries: list[CheckpointEntry]) -> None:
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "newest": entries[-1].file if entries else None,
            "checkpoints": [asdict(entry) for entry in entries],
        }
        write_atomic(self.directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())

    # ------------------------------------------------------------------ saving
    def save(self, state: dict[str, Any], info: dict[str, Any] | None = None) -> CheckpointEntry:
        """Writes ``state`` as the newest checkpoint and keeps the newest ``keep``.

        Args:
            state: a tree of tensors, numpy arrays, numbers, strings, lists, tuples and dicts.
            info: JSON-able facts recorded in the manifest entry.
        Raises:
            OSError: the write failed; the directory still holds the previous checkpoints intact.
            TypeError: ``state`` holds a value that cannot be stored.
        """
        if self.readonly:
            raise CheckpointError(f"state directory {self.directory} was opened read-only")
        tensors, skeleton = encode(state)
        metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "state": json.dumps(skeleton, allow_nan=False)}
        data = safetensors.torch.save(tensors, metadata=metadata)
        entries = [e for e in self.entries() if e.file not in self._bad]
        on_disk = [int(_NAME.match(p.name).group(1)) for p in self._checkpoint_files()]
        sequence = max([e.sequence for e in entries] + on_disk + [0]) + 1
        digest = hashlib.sha256(data).hexdigest()
        entry = CheckpointEntry(
            file=f"ckpt-{sequence:08d}-{digest[:_PREFIX]}.safetensors",
            sha256=digest,
            bytes=len(data),
            sequence=sequence,
            written_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            info=dict(info or {}),
        )
        write_atomic(self.directory / entry.file, data)
        kept = [*entries, entry][-self.keep :]
        self._write_manifest(kept)
        self._remove_unlisted({e.file for e in kept})
        return entry

    def _remove_unlisted(self, listed: set[str]) -> None:
        """Removes checkpoints the manifest no longer lists and left-overs of interrupted saves."""
        for path in self.directory.iterdir():
            if (_NAME.match(path.name) and path.name not in listed) or is_temporary(path):
                path.unlink(missing_ok=True)
        self._bad.clear()

    # ------------------------------------------------------------------ loading
    def load_newest(self) -> Checkpoint | None:
        """The newest intact checkpoint; ``None`` when the directory has none yet.

        A checkpoint that is corrupt, truncated or missing is reported with a warning naming it,
        and the previous one is tried.

        Raises:
            CheckpointIncompatible: the newest readable checkpoint (or the manifest) has another
                format version.
            NoValidCheckpoint: there are checkpoints, but none is intact.
        """
        entries = self.entries()
        problems = []
        for entry in reversed(entries):
            try:
                return Checkpoint(entry, self._read(entry))
            except CheckpointIncompatible:
                raise
            except CheckpointError as error:
                log.warning("%s; falling back to the previous checkpoint", error)
                problems.append(str(error))
                self._bad.add(entry.file)
        if entries:
            raise NoValidCheckpoint(
                f"no intact checkpoint in {self.directory}: {'; '.join(problems)}. "
                "Move the directory away to start afresh."
            )
        return None

    def verify(self) -> list[str]:
        """Checks every listed checkpoint; returns one sentence per problem (empty: all intact)."""
        problems = []
        for entry in self.entries():
            try:
                self._read(entry)
            except CheckpointError as error:
                problems.append(str(error))
        return problems

    def _read(self, entry: CheckpointEntry) -> dict[str, Any]:
        path = self.directory / entry.file
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CheckpointError(f"checkpoint {path} cannot be read ({error.strerror or error})") from None
        if len(data) != entry.bytes:
            raise CheckpointError(f"checkpoint {path} is truncated or damaged ({len(data)} bytes, expected {entry.bytes})")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CheckpointError(f"checkpoint {path} is corrupt (sha256 mismatch)")
        try:
            metadata = _metadata(data)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path} is not a checkpoint file ({error})") from None
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} is not an online-gim checkpoint")
        if metadata.get("version") not in {str(v) for v in READABLE_VERSIONS}:
            raise CheckpointIncompatible(
                f"checkpoint {path} has format version {metadata.get('version')}; "
                f"this online-gim reads versions {_readable()}"
            )
        try:
            return decode(json.loads(metadata["state"]), safetensors.torch.load(data))
        except (ValueError, KeyError, TypeError, safetensors.SafetensorError) as error:
            raise CheckpointError(f"checkpoint {path} cannot be decoded ({error})") from None


def _readable() -> str:
    return ", ".join(str(v) for v in READABLE_VERSIONS)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header size, then JSON."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("no metadata")
    return metadata
