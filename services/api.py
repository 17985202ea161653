"""The HTTP API of the side service (FastAPI): routes, token guard, dashboard page.

:func:`build_app` makes the ASGI app for one :class:`~services.live.LiveBoard`. Handlers read the
board's newest immutable snapshot and never wait on the learner; the only call into the learner is
the FAISS neighbour search (``POST /v1/neighbors``), which runs in a worker thread. Invalid
parameters are answered with 4xx and a sentence; no endpoint reads or writes a file named by a client
(the dashboard's own files are read once, at start).
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from online_gim.report import ModuleReport
from services import learner_view
from services.api_models import (
    MAX_EMBEDDING_FRAMES,
    Drift,
    Embeddings,
    ErrorResponse,
    Health,
    History,
    ModuleStatus,
    Neighbor,
    Neighbors,
    NeighborsRequest,
    PhoneFrame,
    Probes,
    Projection,
    ProjectionPoint,
    Readiness,
    SpeakerGuess,
    Status,
    VideoStatus,
    finite_or_none,
)
from services.event_stream import EventHub
from services.live import LiveBoard
from services.projection import pca_2d
from services.snapshot import BoardSnapshot
from streams.window import FRAME_SAMPLES, SAMPLE_RATE, UNKNOWN_LABEL

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 1 << 20
"""Larger request bodies are refused (413): a declared one before it is read, a chunked one when
its first bytes beyond the limit arrive (what came before is all that is held)."""

OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without the token."""

_ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def dashboard_html() -> str:
    """``static/index.html`` with ``dashboard.css`` and ``dashboard.js`` inlined (one response, no
    asset requests, so the page also works behind the token)."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    html = html.replace('<link rel="stylesheet" href="dashboard.css">', f"<style>\n{css}</style>")
    return html.replace('<script src="dashboard.js"></script>', f"<script>\n{js}</script>")


class RequestGuard:
    """ASGI middleware: the bearer token (``Authorization: Bearer T`` or ``?token=T``) on every path
    but :data:`OPEN_PATHS`, and :data:`MAX_BODY_BYTES` on request bodies of any transfer encoding
    (:class:`_BodyLimit`)."""

    def __init__(self, app, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await _send_too_large(send)
            return
        if self.token is not None and scope.get("path") not in OPEN_PATHS and not self._authorised(scope, headers):
            await _send_json(
                send, 401, {"detail": "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>"},
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        limit = _BodyLimit(receive, send)
        try:
            await self.app(scope, limit.receive, limit.send)
        except Exception:
            if not limit.exceeded:  # else: the app only noticed that the body was cut off
                raise

    def _authorised(self, scope, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return any(hmac.compare_digest(value.encode(), self.token) for value in query.get("token", []))


class _BodyLimit:
    """The ``receive`` and ``send`` of one request, with its body counted as the app reads it (a
    chunked body declares no length). Past :data:`MAX_BODY_BYTES` it answers 413 and closes the
    connection, tells the app that the client has gone, and drops what the app sends after: at
    most the limit is ever held, and the rest of the body is never read."""

    def __init__(self, receive, send) -> None:
        self._receive = receive
        self._send = send
        self._received = 0
        self._started = False
        self.exceeded = False

    async def receive(self) -> dict:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > MAX_BODY_BYTES:
                self.exceeded = True
                if not self._started:
                    await _send_too_large(self._send)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: dict) -> None:
        if self.exceeded:
            return
        self._started = self._started or message["type"] == "http.response.start"
        await self._send(message)


async def _send_too_large(send) -> None:
    """413, closing the connection (so that the server reads no more of the body)."""
    await _send_json(
        send, 413, {"detail": f"request body must be at most {MAX_BODY_BYTES} bytes"}, extra=[(b"connection", b"close")]
    )


async def _send_json(send, status: int, body: dict, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


def build_app(board: LiveBoard, *, token: str | None = None, max_stream_clients: int = 256) -> FastAPI:
    """The FastAPI app serving ``board`` (``token``: required on every path but ``/healthz``)."""
    hub = EventHub(board, max_clients=max_stream_clients)
    page = dashboard_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        hub.start(asyncio.get_running_loop())
        yield
        hub.stop()

    app = FastAPI(
        title="online-gim side service",
        version="1",
        description="What the online learner has learned and how healthy it is, while it listens. "
        "With a token, every path but /healthz needs `Authorization: Bearer <token>` or `?token=<token>`.",
        docs_url=None,
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.add_middleware(RequestGuard, token=token)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # Says what is wrong in words, without echoing the input back (it may hold NaN or be huge).
        return JSONResponse({"detail": describe_validation_error(error)}, status_code=422)

    @app.get("/docs", include_in_schema=False)
    async def docs(token: str | None = None) -> HTMLResponse:
        url = "/openapi.json" + (f"?token={quote(token)}" if token else "")
        return get_swagger_ui_html(openapi_url=url, title="online-gim side service")

    @app.get("/", response_class=HTMLResponse, summary="The live dashboard", tags=["dashboard"])
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Health, summary="The process is alive", tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok", uptime_seconds=time.time() - board.started_at)

    @app.get(
        "/readyz", response_model=Readiness, summary="The source is open and the learner is stepping",
        tags=["health"], responses={503: {"model": Readiness}},
    )
    async def readyz() -> JSONResponse:
        ready, reason = board.readiness()
        return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    @app.get("/v1/status", response_model=Status, summary="Source, stream time, counters, losses, config", tags=["v1"])
    async def status() -> Status:
        return _status(board)

    @app.get(
        "/v1/embeddings/latest", response_model=Embeddings, responses=_ERRORS, tags=["v1"],
        summary="The newest frame embeddings of one module",
    )
    async def embeddings_latest(
        module: int | None = Query(None, ge=0, le=63, description="Module index; default: the top module."),
        frames: int = Query(16, ge=1, le=MAX_EMBEDDING_FRAMES, description="How many of the newest frames."),
        stream: Literal["audio", "video"] = Query(
            "audio", description="`video`: the video learner's (with `listen --source av`); one frame per video frame."
        ),
    ) -> Response:
        if stream == "video":
            body = _video_embeddings(board, module, frames)
        else:
            snap = _require_snapshot(board)
            m = _module_index(len(snap.embeddings), module)
            body = _embeddings_body(
                snap.embeddings[m], m, frames, model_step=snap.embedding_updates,
                window_start_seconds=snap.embedding_start / SAMPLE_RATE, hop_seconds=snap.hop_samples(m) / SAMPLE_RATE,
                times=lambda rows: snap.frame_seconds(m, rows),
            )
        # Built as JSON directly (the model above documents it): a 256 x 512 matrix through
        # pydantic validation would hold the GIL for long.
        return Response(json.dumps(body, separators=(",", ":"), allow_nan=False), media_type="application/json")

    @app.get(
        "/v1/probes/latest", response_model=Probes, responses=_ERRORS, tags=["v1"],
        summary="Phones per 10 ms frame and speakers of the newest window, running probe accuracies",
    )
    async def probes_latest() -> Probes:
        snap = _require_snapshot(board)
        readout = snap.probes
        if readout is None:
            raise HTTPException(404, "the learner has no probes, or they have not read a window yet")
        start = snap.window_start / SAMPLE_RATE
        top = readout.phone_top.tolist()
        prob = readout.phone_prob.tolist()
        labels = readout.phone_label.tolist() if readout.phone_label is not None else []
        frames = []
        for i, phone in enumerate(top):
            label = int(labels[i]) if i < len(labels) and int(labels[i]) != UNKNOWN_LABEL else None
            frames.append(PhoneFrame(
                time=start + i * FRAME_SAMPLES / SAMPLE_RATE,
                phone=int(phone),
                phone_name=board.phone_name(int(phone)),
                probability=finite_or_none(prob[i] if i < len(prob) else None),
                label=label,
                label_name=None if label is None else board.phone_name(label),
            ))
        known = [s for s in snap.frame_speakers if s is not None] if not snap.skipped else []
        return Probes(
            model_step=snap.updates,
            window_start_seconds=start,
            frames=frames,
            speakers=[SpeakerGuess(speaker=str(s), probability=finite_or_none(p) or 0.0) for s, p in readout.speaker_top],
            true_speaker=Counter(known).most_common(1)[0][0] if known else None,
            phone_accuracy=finite_or_none(readout.phone_accuracy),
            speaker_accuracy=finite_or_none(readout.speaker_accuracy),
        )

    @app.get(
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

    @app.post(
        "/v1/neighbors", response_model=Neighbors, responses=_ERRORS, tags=["v1"],
        summary="Nearest stored moments in a module's FAISS memory",
    )
    def neighbors(request: NeighborsRequest | None = None) -> Neighbors:
        request = request or NeighborsRequest()
        return _neighbors(board, request)

    @app.get("/v1/history", response_model=History, tags=["v1"], summary="Compact points of the last windows, for plots")
    async def history(limit: int = Query(600, ge=1, le=10_000, description="How many of the newest points.")) -> History:
        snap = board.snapshot
        if snap is None:
            return History(modules=0, points=[])
        points = snap.history[-limit:]
        return History(modules=len(snap.modules), points=list(points))

    @app.get(
        "/v1/projection", response_model=Projection, responses=_ERRORS, tags=["v1"],
        summary="2-D PCA of recent embeddings, with speakers",
    )
    async def projection(
        module: int | None = Query(None, ge=0, le=63, description="Module index; default: the top module."),
        points: int = Query(400, ge=2, le=2000, description="How many of the newest sampled frames."),
    ) -> Projection:
        snap = _require_snapshot(board)
        m = _module_index(len(snap.embeddings), module)
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

    @app.get("/v1/drift", response_model=Drift, responses=_ERRORS, tags=["v1"], summary="The newest drift reading")
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

    @app.get(
        "/metrics", tags=["metrics"], summary="Prometheus text exposition",
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        body, content_type = board.metrics.render()
        return Response(body, media_type=content_type)

    return app


def describe_validation_error(error: RequestValidationError) -> str:
    """One sentence per problem: ``query parameter 'frames': Input should be less than or equal to 256``."""
    parts = []
    for problem in error.errors():
        loc = [str(x) for x in problem.get("loc", ())]
        where = {"query": "query parameter", "body": "request body", "path": "path parameter"}.get(loc[0] if loc else "", "")
        field = ".".join(loc[1:])
        place = f"{where} '{field}'" if field else (where or "request")
        parts.append(f"{place}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _require_snapshot(board: LiveBoard) -> BoardSnapshot:
    snap = board.snapshot
    if snap is None or not snap.embeddings:
        raise HTTPException(404, "no window has been processed yet")
    return snap


def _video_embeddings(board: LiveBoard, module: int | None, frames: int) -> dict[str, object]:
    """The body of ``/v1/embeddings/latest?stream=video``."""
    if board.video_source is None:
        raise HTTPException(404, "this process learns no video stream (run listen with --source av)")
    snap = board.video_snapshot
    if snap is None or not snap.embeddings:
        raise HTTPException(404, "no video window has been processed yet")
    m = _module_index(len(snap.embeddings), module)
    return _embeddings_body(
        snap.embeddings[m], m, frames, model_step=snap.embedding_updates,
        window_start_seconds=snap.embedding_start / snap.frame_rate, hop_seconds=1.0 / snap.frame_rate,
        times=snap.frame_seconds,
    )


def _embeddings_body(
    emb: torch.Tensor, module: int, frames: int, *, model_step: int, window_start_seconds: float,
    hop_seconds: float, times: Callable[[range], list[float]],
) -> dict[str, object]:
    """The :class:`Embeddings` document of the newest ``frames`` rows of ``emb`` ``(window frames, channels)``;
    ``times(rows)`` gives the stream time of each row in ``rows``."""
    total = int(emb.shape[0])
    first = total - min(frames, total)
    return {
        "module": module,
        "model_step": model_step,
        "window_start_seconds": window_start_seconds,
        "channels": int(emb.shape[1]),
        "frames": total - first,
        "window_frames": total,
        "hop_seconds": hop_seconds,
        "times": times(range(first, total)),
        "values": _matrix(emb[first:].detach().to("cpu", torch.float32)),
    }


def _module_index(count: int, module: int | None) -> int:
    """``module``, or the top one of a stack of ``count`` modules when ``None``."""
    if module is None:
        return count - 1
    if module >= count:
        raise HTTPException(404, f"module {module} does not exist: the stack has modules 0..{count - 1}")
    return module


def _status(board: LiveBoard) -> Status:
    snap = board.snapshot
    ready, _ = board.readiness()
    uptime = time.time() - board.started_at
    video = _video_status(board)
    if snap is None:
        return Status(
            source=board.source, source_id=None, ready=ready, stream_seconds=None, source_seconds=None,
            windows_processed=0, windows_dropped=0, windows_skipped=0, samples_in=0, samples_dropped=0,
            real_time_factor=None, real_time_factor_mean=None, buffer_fill_ratio=None, source_lag_seconds=None,
            step=None, model_step=None, modules=[], config=board.config, uptime_seconds=uptime, video=video,
        )
    modules = [
        _module_status(rep, snap.embeddings, snap.memory_sizes.get(rep.module)) for rep in snap.modules
    ]
    c = snap.counters
    return Status(
        source=board.source,
        source_id=snap.source_id,
        ready=ready,
        stream_seconds=snap.stream_seconds,
        source_seconds=finite_or_none(c.get("source_seconds")),
        windows_processed=snap.seq,
        windows_dropped=int(c.get("windows_dropped", 0)),
        windows_skipped=snap.windows_skipped,
        samples_in=int(c.get("samples_in", 0)),
        samples_dropped=int(c.get("samples_dropped", 0)),
        real_time_factor=finite_or_none(snap.real_time_factor),
        real_time_factor_mean=finite_or_none(snap.real_time_factor_mean),
        buffer_fill_ratio=finite_or_none(snap.fill_ratio),
        source_lag_seconds=finite_or_none(snap.lag_seconds),
        step=snap.step,
        model_step=snap.updates,
        modules=modules,
        config=board.config,
        uptime_seconds=uptime,
        video=video,
    )


def _video_status(board: LiveBoard) -> VideoStatus | None:
    """The video learner's part of ``/v1/status`` (``None`` when the process learns no video)."""
    if board.video_source is None:
        return None
    snap = board.video_snapshot
    if snap is None:
        return VideoStatus(
            source_id=board.video_source, windows_processed=0, stream_seconds=None, window_frames=None,
            skipped=None, real_time_factor=None, model_step=None, modules=[],
        )
    return VideoStatus(
        source_id=board.video_source,
        windows_processed=snap.seq,
        stream_seconds=(snap.start_frame + snap.frames) / snap.frame_rate,
        window_frames=snap.frames,
        skipped=snap.skipped,
        real_time_factor=finite_or_none(snap.real_time_factor),
        model_step=snap.updates,
        modules=[_module_status(rep, snap.embeddings, None) for rep in snap.modules],
    )


def _module_status(rep: ModuleReport, embeddings: tuple[torch.Tensor, ...], memory_vectors: int | None) -> ModuleStatus:
    """One module's line of ``/v1/status``; ``embeddings`` are the stack's newest ``(frames, channels)`` outputs."""
    emb = embeddings[rep.module] if rep.module < len(embeddings) else None
    return ModuleStatus(
        module=rep.module,
        updated=rep.updated,
        loss=finite_or_none(rep.loss),
        loss_positive=finite_or_none(rep.loss_pos),
        loss_negative=finite_or_none(rep.loss_neg),
        loss_chance_ratio=finite_or_none(rep.loss_ratio),
        active_hinge_fraction=finite_or_none(rep.active_fraction),
        dead_unit_fraction=finite_or_none(rep.dead_fraction),
        seconds=finite_or_none(rep.seconds),
        frames=int(emb.shape[0]) if emb is not None else None,
        channels=int(emb.shape[1]) if emb is not None and emb.dim() == 2 else None,
        memory_vectors=memory_vectors,
    )


def _neighbors(board: LiveBoard, request: NeighborsRequest) -> Neighbors:
    learner = board.learner
    sizes = learner_view.memory_sizes(learner)
    if not sizes:
        raise HTTPException(404, "the learner has no FAISS memories to search")
    module = _default_memory_module(board, sizes) if request.module is None else request.module
    memory = learner_view.memory_for(learner, module)
    if memory is None:
        raise HTTPException(404, f"module {module} has no memory; modules with one: {sorted(sizes)}")
    dim = getattr(memory, "dim", None)
    if request.embedding is not None:
        query = torch.tensor(request.embedding, dtype=torch.float32)
        described = "request"
    else:
        snap = _require_snapshot(board)
        if module >= len(snap.embeddings):
            raise HTTPException(404, f"module {module} has no embeddings in the newest window")
        emb = snap.embeddings[module]
        frame = -1 if request.frame is None else request.frame
        if not -emb.shape[0] <= frame < emb.shape[0]:
            raise HTTPException(422, f"frame {frame} is outside the window's {emb.shape[0]} frames")
        query = emb[frame].detach().to("cpu", torch.float32)
        described = f"latest frame {frame % emb.shape[0]}"
    if isinstance(dim, int) and query.shape[0] != dim:
        raise HTTPException(422, f"the embedding has {query.shape[0]} values but module {module}'s memory holds {dim}-dimensional vectors")
    try:
        hits = memory.nearest(query, request.k)
    except ValueError as error:
        raise HTTPException(422, f"cannot search module {module}'s memory: {error}") from None
    neighbors = []
    for hit in hits:
        data = learner_view.hit_to_dict(hit)
        phone = data["phone"]
        neighbors.append(Neighbor(**data, phone_name=None if phone is None else board.phone_name(phone)))
    return Neighbors(module=module, k=request.k, query=described, memory_vectors=sizes.get(module), neighbors=neighbors)


def _default_memory_module(board: LiveBoard, sizes: dict[int, int]) -> int:
    """The top module whose memory holds vectors of its own output's size (the GRU shares the top
    conv module's memory, which holds that module's encodings, not the GRU's)."""
    snap = board.snapshot
    for module in sorted(sizes, reverse=True):
        memory = learner_view.memory_for(board.learner, module)
        dim = getattr(memory, "dim", None)
        if snap is None or module >= len(snap.embeddings) or dim is None or snap.embeddings[module].shape[-1] == dim:
            return module
    return max(sizes)


def _matrix(values: torch.Tensor) -> list[list[float | None]]:
    if bool(torch.isfinite(values).all()):
        return values.tolist()
    return [[v if math.isfinite(v) else None for v in row] for row in values.tolist()]



