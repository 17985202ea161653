"""What the learner does over time: ``/v1/stream`` (an SSE event per window), ``/v1/history``,
``/v1/projection`` (PCA of recent embeddings), ``/v1/drift`` and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from online_gim.jsonable import finite_or_none
from online_gim.services.api_models import Drift, ErrorResponse, History, Projection, ProjectionPoint
from online_gim.services.event_stream import EventHub
from online_gim.services.live import LiveBoard
from online_gim.services.projection import pca_2d
from online_gim.services.routes import ERRORS, module_index, require_snapshot


def watch_routes(board: LiveBoard, hub: EventHub) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/v1/stream", tags=["v1"], responses={200: {"content": {"text/event-stream": {}}}, 429: {"model": ErrorResponse}},
        summary="Server-Sent Events: one compact 'step' event per processed window",
    )
    async def stream() -> StreamingResponse:
        if hub.clients >= hub.max_clients:
            raise HTTPException(429, f"at most {hub.max_clients} stream clients at once; try again later")
        return StreamingResponse(
            hub.events(), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/v1/history", response_model=History, tags=["v1"], summary="Compact points of the last windows, for plots")
    async def history(limit: int = Query(600, ge=1, le=10_000, description="How many of the newest points.")) -> History:
        snap = board.snapshot
        if snap is None:
            return History(modules=0, points=[])
        points = snap.history[-limit:]
        return History(modules=len(snap.modules), points=list(points))

    @router.get(
        "/v1/projection", response_model=Projection, responses=ERRORS, tags=["v1"],
        summary="2-D PCA of recent embeddings, with speakers",
    )
    async def projection(
        module: int | None = Query(None, ge=0, le=63, description="Module index; default: the top module."),
        points: int = Query(400, ge=2, le=2000, description="How many of the newest sampled frames."),
    ) -> Projection:
        snap = require_snapshot(board)
        m = module_index(len(snap.embeddings), module)
        samples = snap.projection[m][-points:] if m < len(snap.projection) else ()
        if not samples:
            return Projection(module=m, explained_variance=[0.0, 0.0], speakers=[], points=[])
        coords, explained = pca_2d(torch.stack([s.vector for s in samples]))
        speakers = list(dict.fromkeys(s.speaker for s in samples if s.speaker is not None))
        return Projection(
            module=m,
            explained_variance=[float(v) for v in explained],
            speakers=speakers,
            points=[
                ProjectionPoint(x=float(c[0]), y=float(c[1]), t=s.stream_seconds, speaker=s.speaker, phone=s.phone)
                for c, s in zip(coords.tolist(), samples)
            ],
        )

    @router.get("/v1/drift", response_model=Drift, responses=ERRORS, tags=["v1"], summary="The newest drift reading")
    async def drift() -> Drift:
        reading = board.drift_reading
        if reading is None:
            raise HTTPException(404, "no drift reading yet")
        return Drift(
            stream_seconds=reading.stream_seconds,
            reference_start=finite_or_none(reading.reference_start),
            reference_stop=finite_or_none(reading.reference_stop),
            embedding_cosine={m: finite_or_none(v) for m, v in reading.embedding_cosine.items()},
            embedding_mmd={m: finite_or_none(v) for m, v in reading.embedding_mmd.items()},
            weight_change={m: finite_or_none(v) for m, v in reading.weight_change.items()},
            weight_interval_seconds=finite_or_none(reading.weight_interval_seconds),
            input_level_db=finite_or_none(reading.input_level_db),
            input_level_drift_db=finite_or_none(reading.input_level_drift_db),
            input_spectrum_drift_db=finite_or_none(reading.input_spectrum_drift_db),
            input_centroid_hz=finite_or_none(reading.input_centroid_hz),
            input_flatness=finite_or_none(reading.input_flatness),
            config={k: float(v) for k, v in asdict(board.drift_config).items()},
        )

    @router.get(
        "/metrics", tags=["metrics"], summary="Prometheus text exposition",
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        body, content_type = board.metrics.render()
        return Response(body, media_type=content_type)

    return router
