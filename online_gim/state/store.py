"""A state directory: the last K checkpoints of a learner, atomic, checksummed, with a manifest.

Layout of a state directory::

    DIR/manifest.json                              which checkpoints exist, oldest first, and the newest
    DIR/ckpt-00000012-3f9a0c1b2d4e5f60.safetensors one checkpoint: sequence number (8 digits or more)
                                                   and sha256 prefix

The process that writes DIR holds an exclusive ``flock`` on the directory itself, so no file inside
it (created, removed or replaced by anyone) can hand the directory to a second writer.

A checkpoint file is a safetensors file: the tree's tensors and numpy arrays as tensors, and in its
metadata the format name, the format version and the rest of the tree as JSON (:mod:`.codec`).
Nothing is unpickled on load. The manifest (JSON) has the format version and, per checkpoint, the
file name, its sha256 and size, the sequence number, the time it was written and a small ``info``
dict (model step, stream position) for people and tools.

Saving writes the checkpoint atomically (:func:`.atomic.write_atomic`), then the manifest, then
removes the checkpoints the manifest listed and no longer lists (beyond the newest ``keep``, or
found corrupt). The store deletes only files it wrote: those checkpoints, and the temporary files
of its own interrupted saves (``<checkpoint or manifest name>.<pid>.tmp``, removed when a writer
opens the directory). Anything else in the directory is left alone. A crash at any moment leaves
the previous manifest and every checkpoint it lists intact.

Loading takes the newest checkpoint whose sha256 matches; a corrupt, truncated or missing one is
reported (a warning naming it) and the previous one is tried. A checkpoint or manifest of another
format version is refused (:class:`CheckpointIncompatible`): an old learner must not half-read a
new format. If the manifest itself is lost or damaged, the checkpoints are recovered from the file
names, whose sha256 prefix verifies them. A manifest that is not valid JSON of the expected types
(file names of checkpoints, integer sizes and sequence numbers, ...) counts as damaged.

Usage::

    store = CheckpointStore("state/", keep=3)           # creates it, takes the lock
    checkpoint = store.load_newest()                    # None when empty
    if checkpoint is not None:
        learner.load_state_dict(checkpoint.state["learner"])
    store.save({"learner": learner.state_dict()}, info={"model_step": learner.updates})
    store.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as validated_dataclass

from online_gim.state.atomic import TEMPORARY_SUFFIX, write_atomic
from online_gim.state.codec import decode, encode

log = logging.getLogger(__name__)

FORMAT = "online-gim-checkpoint"
FORMAT_VERSION = 2
"""Version of the checkpoint and manifest format written (2: large float tensors packed, see
:mod:`.codec`)."""

READABLE_VERSIONS = (1, 2)
"""Versions read; another one is refused on load."""

MANIFEST = "manifest.json"
_NAME = re.compile(r"^ckpt-(\d{8,})-([0-9a-f]{16})\.safetensors$")
_TEMPORARY = re.compile(rf"^(?:{re.escape(MANIFEST)}|ckpt-\d{{8,}}-[0-9a-f]{{16}}\.safetensors)\.\d+{re.escape(TEMPORARY_SUFFIX)}$")
"""The temporary files of this store's atomic writes (:func:`.atomic.write_atomic`): nothing else is one."""
_PREFIX = 16  # hex digits of the sha256 in a checkpoint's file name


class CheckpointError(Exception):
    """A state directory cannot be used; the message says why and what to do."""


class CheckpointIncompatible(CheckpointError):
    """A checkpoint or manifest of another format version."""


class NoValidCheckpoint(CheckpointError):
    """The state directory has checkpoints, but none of them is intact."""


@validated_dataclass(frozen=True, config=ConfigDict(strict=True))
class CheckpointEntry:
    """One checkpoint as the manifest lists it (the field types are checked: a hand-edited manifest
    with a wrong one is damaged).

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
        self._lock: int | None = None  # a descriptor of the directory, flock-ed while this store writes it
        self._bad: set[str] = set()  # checkpoints found corrupt; dropped from the manifest on the next save
        self._checked: dict[str, CheckpointEntry | None] = {}  # unlisted checkpoint files, verified once
        if readonly:
            if not self.directory.is_dir():
                raise CheckpointError(f"state directory {self.directory} does not exist")
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise CheckpointError(f"cannot use {self.directory} as a state directory: {error.strerror or error}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise CheckpointError(f"state directory {self.directory} is in use by another online-gim process") from None
        try:
            self._remove_stale_temporaries()
            self._check_writable()
        except CheckpointError:
            self.close()
            raise

    def _remove_stale_temporaries(self) -> None:
        """Removes the temporary files of this store's interrupted saves (with the lock held, no save
        of another process is under way)."""
        for path in self.directory.iterdir():
            if _TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                except OSError as error:
                    raise CheckpointError(
                        f"state directory {self.directory} cannot be written (removing {path.name}: {error.strerror or error})"
                    ) from None

    def _check_writable(self) -> None:
        """Creates and removes a file as a save would, so that a directory that cannot be written is
        refused before anything is learned rather than at the first checkpoint."""
        probe = self.directory / f"{MANIFEST}.{os.getpid()}{TEMPORARY_SUFFIX}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        except OSError as error:
            raise CheckpointError(f"state directory {self.directory} cannot be written ({error.strerror or error})") from None

    def close(self) -> None:
        """Releases the lock (idempotent)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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
            entries = [CheckpointEntry(**item) for item in manifest["checkpoints"]]
            wrong = [entry.file for entry in entries if _sequence_of(entry.file) != entry.sequence]
            if wrong:
                raise ValueError(f"{wrong[0]!r} is not the name of a checkpoint with its sequence number")
            return entries + self._unlisted_newer(entries)
        except FileNotFoundError:
            if not self._checkpoint_files():
                return []
            log.warning("%s is missing; recovering the checkpoints from their files", path)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(key) for key in problem["loc"])
            log.warning("%s is damaged (%s: %s); recovering the checkpoints from their files", path, where, problem["msg"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s is unreadable (%s); recovering the checkpoints from their files", path, error)
        return self._recover()

    def _checkpoint_files(self) -> list[Path]:
        """The regular files named like checkpoints, by sequence number."""
        files = [p for p in self.directory.iterdir() if _NAME.match(p.name) and p.is_file() and not p.is_symlink()]
        return sorted(files, key=lambda p: _sequence_of(p.name))

    def _recover(self) -> list[CheckpointEntry]:
        """Entries for the checkpoint files whose content matches the sha256 prefix in their name
        (a file that does not is reported and left alone: nothing says this store wrote it)."""
        return [entry for entry in map(self._verified, self._checkpoint_files()) if entry is not None]

    def _unlisted_newer(self, listed: list[CheckpointEntry]) -> list[CheckpointEntry]:
        """Intact checkpoint files newer than the manifest's newest that it does not list: saves
        whose manifest update was cut short (a crash after the rename), taken over as checkpoints."""
        newest = max((entry.sequence for entry in listed), default=0)
        names = {entry.file for entry in listed}
        newer = [p for p in self._checkpoint_files() if _sequence_of(p.name) > newest and p.name not in names]
        return [entry for entry in map(self._verified, newer) if entry is not None]

    def _verified(self, path: Path) -> CheckpointEntry | None:
        """The entry of a checkpoint file whose content matches the sha256 prefix in its name; ``None``
        (reported once) for one that does not or cannot be read."""
        if path.name in self._checked:
            return self._checked[path.name]
        entry = None
        sequence, prefix = _NAME.match(path.name).groups()
        try:
            data = path.read_bytes()
            written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        except OSError as error:
            log.warning("checkpoint %s cannot be read (%s); skipping it", path, error.strerror or error)
        else:
            digest = hashlib.sha256(data).hexdigest()
            if digest.startswith(prefix):
                entry = CheckpointEntry(path.name, digest, len(data), int(sequence), written)
            else:
                log.warning("checkpoint %s is corrupt (its content does not match its name); skipping it", path)
        self._checked[path.name] = entry
        return entry

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
        owned = self.entries()
        entries = [e for e in owned if e.file not in self._bad]
        on_disk = [_sequence_of(p.name) for p in self.directory.iterdir() if _NAME.match(p.name)]
        sequence = max([e.sequence for e in owned] + on_disk + [0]) + 1
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
        try:
            self._write_manifest(kept)
        except OSError:
            with contextlib.suppress(OSError):  # the manifest does not list it: it would never be removed
                (self.directory / entry.file).unlink()
            raise
        self._remove({e.file for e in owned} - {e.file for e in kept})
        return entry

    def _remove(self, files: set[str]) -> None:
        """Removes checkpoints the manifest listed and no longer lists (a file that cannot be
        removed is reported and left)."""
        for name in files:
            path = self.directory / name
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            except OSError as error:
                log.warning("old checkpoint %s could not be removed (%s)", path, error.strerror or error)
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


def _sequence_of(name: str) -> int:
    """The sequence number in a checkpoint's file name (-1 for a name that is not a checkpoint's)."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else -1


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
