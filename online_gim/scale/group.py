"""The process group of a scaled-out run: torch.distributed over gloo, set up from the environment
``torchrun`` gives every process it starts (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

GROUP_TIMEOUT_SECONDS = 60.0
"""How long a collective or a blocking receive waits before the group gives up (a peer that neither
answers nor closes its connection)."""


@dataclass(frozen=True)
class ProcessGroup:
    """This process' place in the run: rank ``rank`` of ``world_size`` processes."""

    rank: int
    world_size: int


def launched() -> bool:
    """Whether this process was started by a launcher (``torchrun``) as one rank of a group."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(timeout_seconds: float = GROUP_TIMEOUT_SECONDS) -> ProcessGroup:
    """Joins the default process group (gloo; rendezvous by the launcher's environment variables,
    ``env://``) and returns this process' place in it. Raises ``RuntimeError`` when the group cannot
    form (a peer never came, the rendezvous endpoint is unreachable)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_seconds))
    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size())


def leave() -> None:
    """Leaves the default process group, if this process is in one."""
    if dist.is_initialized():
        dist.destroy_process_group()
