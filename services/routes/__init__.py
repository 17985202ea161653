"""The side service's endpoints, one module per group, each a function that builds a FastAPI
``APIRouter`` for one :class:`~online_gim.services.live.LiveBoard` (:func:`online_gim.services.api.build_app` includes them):

- :mod:`.health`: ``/healthz``, ``/readyz``;
- :mod:`.learner`: ``/v1/status``, ``/v1/embeddings/latest``, ``/v1/probes/latest``, ``/v1/neighbors``;
- :mod:`.watch`: ``/v1/stream``, ``/v1/history``, ``/v1/projection``, ``/v1/drift``, ``/metrics``.

A new endpoint goes into the group it belongs to (or a new module here, included in ``build_app``),
reads the board's newest snapshot and never waits on the learner.
"""

from __future__ import annotations

from fastapi import HTTPException

from online_gim.services.api_models import ErrorResponse
from online_gim.services.live import LiveBoard
from online_gim.services.snapshot import BoardSnapshot

ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
"""The documented error answers of an endpoint that can answer 404 or 422."""


def require_snapshot(board: LiveBoard) -> BoardSnapshot:
    """The newest snapshot with embeddings; 404 before the first window."""
    snap = board.snapshot
    if snap is None or not snap.embeddings:
        raise HTTPException(404, "no window has been processed yet")
    return snap


def module_index(count: int, module: int | None) -> int:
    """``module``, or the top one of a stack of ``count`` modules when ``None``; 404 beyond the stack."""
    if module is None:
        return count - 1
    if module >= count:
        raise HTTPException(404, f"module {module} does not exist: the stack has modules 0..{count - 1}")
    return module
