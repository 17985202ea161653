"""``/healthz`` (the process is alive) and ``/readyz`` (the source is open and the learner steps)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from online_gim.services.api_models import Health, Readiness
from online_gim.services.live import LiveBoard


def health_routes(board: LiveBoard) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok", uptime_seconds=time.time() - board.started_at)

    @router.get(
        "/readyz", response_model=Readiness, summary="The source is open and the learner is stepping",
        responses={503: {"model": Readiness}},
    )
    async def readyz() -> JSONResponse:
        ready, reason = board.readiness()
        return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    return router
