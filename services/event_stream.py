"""Server-Sent Events fan-out: one compact event per processed window to every ``/v1/stream`` client.

The learner's thread only schedules one callback on the server's event loop per window (and none
when nobody listens); the event is serialised once on the loop and put on each client's bounded
queue. A client that does not keep up loses its oldest events (counted per client), so a slow
client can never hold memory or the learner back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from online_gim.services.live import LiveBoard
from online_gim.services.snapshot import BoardSnapshot

KEEPALIVE_SECONDS = 15.0


class _Client:
    __slots__ = ("queue", "lost")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self.lost = 0


class EventHub:
    """Fans the board's snapshots out to SSE clients on one asyncio loop.

    Parameters:
        board: the board to listen to.
        max_clients: clients served at once (more get 429).
        queue_size: events buffered per client before the oldest are dropped.
    """

    def __init__(self, board: LiveBoard, *, max_clients: int = 256, queue_size: int = 32) -> None:
        self.board = board
        self.max_clients = max_clients
        self.queue_size = queue_size
        self._clients: set[_Client] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin listening; events are delivered on ``loop``."""
        self._loop = loop
        self.board.add_listener(self._on_snapshot)

    def stop(self) -> None:
        """Stop listening and end every client's stream (call on the loop)."""
        self.board.remove_listener(self._on_snapshot)
        self._closed = True
        for client in list(self._clients):
            _put(client, None)

    def stop_threadsafe(self) -> None:
        """End every client's stream from any thread (before the server shuts down, so that event
        streams finish cleanly instead of being cut at the graceful-shutdown timeout)."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.stop)
            except RuntimeError:  # the loop has closed
                pass

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _on_snapshot(self, snapshot: BoardSnapshot | None) -> None:  # the learner's thread
        loop = self._loop
        if loop is None or (snapshot is not None and not self._clients):
            return
        try:
            loop.call_soon_threadsafe(self._dispatch, snapshot)
        except RuntimeError:  # the loop has closed
            pass

    def _dispatch(self, snapshot: BoardSnapshot | None) -> None:  # the loop
        if snapshot is None:
            self.stop()
            return
        payload = format_event(snapshot)
        for client in list(self._clients):
            _put(client, payload)

    async def events(self) -> AsyncIterator[bytes]:
        """One client's stream: the newest event at once, then one per window, keep-alives between."""
        client = _Client(self.queue_size)
        self._clients.add(client)
        self.board.metrics.stream_clients.set(len(self._clients))
        try:
            yield b"retry: 2000\n\n"
            snapshot = self.board.snapshot
            if snapshot is not None:
                yield format_event(snapshot)
            while not self._closed:
                try:
                    payload = await asyncio.wait_for(client.queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if payload is None:
                    return
                yield payload
        finally:
            self._clients.discard(client)
            self.board.metrics.stream_clients.set(len(self._clients))


def _put(client: _Client, payload: bytes | None) -> None:
    while True:
        try:
            client.queue.put_nowait(payload)
            return
        except asyncio.QueueFull:
            try:
                client.queue.get_nowait()
                client.lost += 1
            except asyncio.QueueEmpty:
                pass


def format_event(snapshot: BoardSnapshot) -> bytes:
    """``snapshot.event`` as one SSE message: ``id: <seq>``, ``event: step``, ``data: <json>``."""
    data = json.dumps(snapshot.event, separators=(",", ":"), allow_nan=False, default=str)
    return f"id: {snapshot.seq}\nevent: step\ndata: {data}\n\n".encode()
