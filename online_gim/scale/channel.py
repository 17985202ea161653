"""Messages between the processes of a pipeline, over torch.distributed's point-to-point operations.

A :class:`Message` is a kind, a small picklable ``meta`` object (a window's place and labels, a
report) and at most one tensor (a window's activations). On the wire it is three tensors sent to
one peer under one tag (gloo keeps their order per peer and tag): a header ``(kind, meta bytes,
tensor dims, shape...)`` of :data:`HEADER_LENGTH` int64, the pickled ``meta`` as uint8, and the
tensor (contiguous float32).

Neither side of a link ever waits for the other in the learner's thread:

- an :class:`Inbox` receives on its own thread into a bounded queue: when the consumer falls behind,
  the oldest message waiting is dropped and counted (the ring buffer's policy), so a gloo send to
  it completes as soon as the bytes have crossed;
- an :class:`Outbox` sends on its own thread from a bounded queue; :meth:`Outbox.put` drops the
  oldest message waiting (counted) rather than block, unless asked to keep every message.

A peer that dies closes its connections: gloo raises "Connection closed by peer" in the pending
receive or send at once, and the link records it as :attr:`failure` (:class:`PeerLost` when asked).
"""

from __future__ import annotations

import pickle
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
import torch.distributed as dist

HEADER_LENGTH = 8
"""int64 entries of a message header: kind, meta bytes, tensor dims (-1: no tensor), up to 5 sizes."""


class Kind(IntEnum):
    """What a message is."""

    WINDOW = 1
    """a window for the next stage: ``meta`` its place and labels, the tensor its activations"""
    REPORT = 2
    """a stage's report of one window (to rank 0)"""
    CHECKPOINT = 3
    """save your shard now (``meta``: the checkpoint's number); travels with the windows"""
    SAVED = 4
    """a stage saved its shard (to rank 0)"""
    END = 5
    """the stream ended: finish and say what you did"""
    FINAL = 6
    """a stage's final tally (to rank 0)"""
    BYE = 7
    """rank 0 to every stage: all is done, leave the group"""
    LOST = 8
    """a process of the run is gone (``meta``: ``(its name, what was seen)``): a stage's notice to
    rank 0, rank 0's verdict to every stage before it leaves"""


class Tag(IntEnum):
    """The channels between two processes (one gloo tag each, so they never mix)."""

    DATA = 1
    """windows, checkpoints and the end, stage to stage"""
    REPORTS = 2
    """reports, saves and final tallies, every stage to rank 0"""
    CONTROL = 3
    """rank 0 to every stage"""


LAST_KINDS = (Kind.END, Kind.FINAL, Kind.BYE, Kind.LOST)
"""Kinds after which a link carries nothing more."""


@dataclass(frozen=True)
class Message:
    """One message: ``kind``, ``meta`` (picklable, small) and at most one float32 tensor."""

    kind: Kind
    meta: Any = None
    tensor: torch.Tensor | None = None


class PeerLost(RuntimeError):
    """A process of the run is gone (its connection closed, or a send or receive to it failed).

    Attributes:
        peer: its name (``"stage 1 (modules 3-5, rank 1)"``); ``detail``: what was seen.
    """

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"{peer}: {detail}")
        self.peer, self.detail = peer, detail


def send(message: Message, peer: int, tag: Tag) -> int:
    """Sends ``message`` to rank ``peer`` and waits until it has been received there. Returns the
    bytes it put on the wire (header, meta and tensor)."""
    meta = torch.frombuffer(bytearray(pickle.dumps(message.meta, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    header = torch.full((HEADER_LENGTH,), -1, dtype=torch.int64)
    header[0], header[1] = int(message.kind), meta.numel()
    parts = [header, meta]
    if message.tensor is not None:
        tensor = message.tensor.detach().to(torch.float32).contiguous()
        if tensor.dim() > HEADER_LENGTH - 3:
            raise ValueError(f"a message tensor has at most {HEADER_LENGTH - 3} dims, got {tensor.dim()}")
        header[2] = tensor.dim()
        header[3 : 3 + tensor.dim()] = torch.tensor(tensor.shape)
        parts.append(tensor)
    for work in [dist.isend(part, peer, tag=int(tag)) for part in parts]:
        work.wait()
    return sum(part.numel() * part.element_size() for part in parts)


def receive(peer: int, tag: Tag) -> Message:
    """Receives the next message from rank ``peer`` under ``tag`` (blocks)."""
    header = torch.empty(HEADER_LENGTH, dtype=torch.int64)
    dist.recv(header, peer, tag=int(tag))
    meta = torch.empty(int(header[1]), dtype=torch.uint8)
    dist.recv(meta, peer, tag=int(tag))
    tensor = None
    if int(header[2]) >= 0:
        tensor = torch.empty(tuple(int(size) for size in header[3 : 3 + int(header[2])]), dtype=torch.float32)
        dist.recv(tensor, peer, tag=int(tag))
    return Message(Kind(int(header[0])), pickle.loads(meta.numpy().tobytes()), tensor)


class Inbox:
    """Receives from one peer and tag on a daemon thread into a queue of at most ``capacity``
    messages; a message arriving at a full queue pushes out the oldest :class:`Kind.WINDOW` waiting
    (counted in :attr:`dropped`); other kinds are never dropped.

    Parameters:
        peer, tag: where from.
        name: the peer, for people (``"stage 1 (modules 3-5, rank 1)"``).
        capacity: windows the queue holds.

    Attributes:
        dropped: windows dropped because the consumer fell behind.
        failure: why receiving stopped (the peer is gone), else ``None``; ``failed_at``: when
            (``time.monotonic()``).
    """

    def __init__(self, peer: int, tag: Tag, *, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.peer, self.tag, self.name, self.capacity = peer, tag, name, capacity
        self.dropped = 0
        self.failure: str | None = None
        self.failed_at: float | None = None
        self._queue: deque[Message] = deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._receive_loop, name=f"inbox-{name}", daemon=True)
        self._thread.start()

    def _receive_loop(self) -> None:
        while True:
            try:
                message = receive(self.peer, self.tag)
            except (RuntimeError, ValueError) as error:  # gloo: connection closed, timeout; group destroyed
                with self._ready:
                    self.failure, self.failed_at = _first_line(error), time.monotonic()
                    self._ready.notify_all()
                return
            with self._ready:
                windows = [m for m in self._queue if m.kind == Kind.WINDOW]
                if message.kind == Kind.WINDOW and len(windows) >= self.capacity:
                    self._queue.remove(windows[0])
                    self.dropped += 1
                self._queue.append(message)
                self._ready.notify_all()
            if message.kind in LAST_KINDS:
                return  # the peer sends nothing after these

    def poll(self) -> Message | None:
        """The oldest message waiting, or ``None`` (never waits, never raises)."""
        with self._ready:
            return self._queue.popleft() if self._queue else None

    def get(self, timeout: float) -> Message | None:
        """The oldest message waiting, waiting at most ``timeout`` seconds; ``None`` if none came.
        Raises :class:`PeerLost` once the queue is empty and receiving has failed."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._queue:
                if self.failure is not None:
                    raise PeerLost(self.name, self.failure)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)
            return self._queue.popleft()


class Outbox:
    """Sends to one peer and tag on a daemon thread, from a queue of at most ``capacity`` messages.

    Parameters:
        peer, tag, name: where to (``name`` for people).
        capacity: messages waiting at most; ``None``: unbounded (every message is sent: reports).

    Attributes:
        dropped: windows dropped because sending fell behind (never with ``capacity=None``).
        sent: messages sent; ``bytes_sent``: their bytes on the wire.
        failure: why sending stopped (the peer is gone), else ``None``; ``failed_at``: when.
    """

    def __init__(self, peer: int, tag: Tag, *, name: str, capacity: int | None = None) -> None:
        self.peer, self.tag, self.name, self.capacity = peer, tag, name, capacity
        self.dropped = 0
        self.sent = 0
        self.bytes_sent = 0
        self.failure: str | None = None
        self.failed_at: float | None = None
        self._queue: deque[Message] = deque()
        self._ready = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._send_loop, name=f"outbox-{name}", daemon=True)
        self._thread.start()

    def put(self, message: Message) -> None:
        """Queues ``message`` (never blocks). Raises :class:`PeerLost` if sending has failed."""
        with self._ready:
            if self.failure is not None:
                raise PeerLost(self.name, self.failure)
            windows = [m for m in self._queue if m.kind == Kind.WINDOW]
            if self.capacity is not None and message.kind == Kind.WINDOW and len(windows) >= self.capacity:
                self._queue.remove(windows[0])
                self.dropped += 1
            self._queue.append(message)
            self._ready.notify_all()

    def flush(self, timeout: float) -> bool:
        """Waits until every queued message has been sent (at most ``timeout`` s); whether it was.
        Raises :class:`PeerLost` if sending failed."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._queue or self._busy:
                if self.failure is not None:
                    raise PeerLost(self.name, self.failure)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
            if self.failure is not None:
                raise PeerLost(self.name, self.failure)
        return True

    def _send_loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                message = self._queue.popleft()
                self._busy = True
            try:
                nbytes = send(message, self.peer, self.tag)
            except (RuntimeError, ValueError) as error:
                with self._ready:
                    self.failure, self.failed_at = _first_line(error), time.monotonic()
                    self._busy = False
                    self._ready.notify_all()
                return
            with self._ready:
                self.sent += 1
                self.bytes_sent += nbytes
                self._busy = False
                self._ready.notify_all()
            if message.kind in LAST_KINDS:
                return


def _first_line(error: BaseException) -> str:
    """The gist of a gloo error (its first line, without the source location)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split("] ", 1)[-1]
