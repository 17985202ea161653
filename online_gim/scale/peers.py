"""Knowing at once when a peer of the process group is lost: :class:`PeerWatch`.

A collective of the group (an averaging round) notices a dead peer only when it runs, which may be
many windows away. The watch notices within about a second whatever this process is doing: on a
group of its own, every rank posts one receive from every peer at the start and nothing else
travels until the end. A peer that leaves in order sends its "leaving" message first, which
completes that receive; a peer whose process ends without it (SIGKILL, a crash, a lost machine)
closes its connections, and gloo fails the receive at once ("Connection closed by peer"): the
watch then knows which rank it lost. No heartbeat traffic, and a peer that is merely slow (a long
checkpoint, a busy core) is never taken for a lost one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

WATCH_TIMEOUT = timedelta(days=365)
"""The watch group's timeout: its receives wait for a message or a closed connection, never for time."""


class PeerWatch:
    """Watches every other rank of the default process group, from the moment it is made until
    :meth:`leave`.

    Parameters:
        on_lost: called once, from a watch thread, with the rank of the first peer lost (its process
            ended without leaving: killed, crashed, or its connection broke).

    Attributes:
        lost: the first rank lost, ``None`` while none is.
    """

    def __init__(self, on_lost: Callable[[int], None]) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self._on_lost = on_lost
        self._group = dist.new_group(backend="gloo", timeout=WATCH_TIMEOUT)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._left: set[int] = set()
        self.lost: int | None = None
        for peer in self.peers:
            work = dist.irecv(torch.zeros(1), src=peer, group=self._group)
            threading.Thread(target=self._wait, args=(peer, work), name=f"peer-watch-{peer}", daemon=True).start()

    @property
    def peers(self) -> list[int]:
        """The other ranks."""
        return [rank for rank in range(self.world_size) if rank != self.rank]

    def _wait(self, peer: int, work: dist.Work) -> None:
        try:
            work.wait()
            lost = False
        except RuntimeError:  # gloo: "Connection closed by peer"
            lost = True
        with self._lock:
            if not lost:
                self._left.add(peer)
            first = lost and self.lost is None
            if first:
                self.lost = peer
            self._settled.notify_all()
        if first:
            self._on_lost(peer)

    def leave(self, timeout: float = 30.0) -> bool:
        """Tells every peer that this rank leaves in order, then waits up to ``timeout`` seconds for
        every peer to have left or been lost. Returns whether every peer left in order."""
        if self.lost is None:
            for peer in self.peers:
                try:
                    dist.isend(torch.ones(1), dst=peer, group=self._group).wait()
                except RuntimeError:  # that peer is gone: its own receive has told it nothing, and it is not waiting
                    pass
        with self._settled:
            self._settled.wait_for(lambda: self.lost is not None or len(self._left) == len(self.peers), timeout)
            return self.lost is None and len(self._left) == len(self.peers)
