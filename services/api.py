"""The HTTP API of the side service (FastAPI): the app, its guard, its dashboard page.

:func:`build_app` makes the ASGI app for one :class:`~online_gim.services.live.LiveBoard`: the endpoints are
the routers of :mod:`online_gim.services.routes` (health, the learner's state, what it does over time), behind
the token and body-limit middleware (:mod:`online_gim.services.request_guard`). Handlers read the board's
newest immutable snapshot and never wait on the learner; the only call into the learner is the
FAISS neighbour search (``POST /v1/neighbors``), which runs in a worker thread. Invalid parameters
are answered with 4xx and a sentence; no endpoint reads or writes a file named by a client (the
dashboard's own files are read once, at start).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from online_gim.services.event_stream import EventHub
from online_gim.services.live import LiveBoard
from online_gim.services.request_guard import RequestGuard
from online_gim.services.routes.health import health_routes
from online_gim.services.routes.learner import learner_routes
from online_gim.services.routes.watch import watch_routes

STATIC_DIR = Path(__file__).with_name("static")


def dashboard_html() -> str:
    """``static/index.html`` with ``dashboard.css`` and ``dashboard.js`` inlined (one response, no
    asset requests, so the page also works behind the token)."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    html = html.replace('<link rel="stylesheet" href="dashboard.css">', f"<style>\n{css}</style>")
    return html.replace('<script src="dashboard.js"></script>', f"<script>\n{js}</script>")


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

    app.include_router(health_routes(board))
    app.include_router(learner_routes(board))
    app.include_router(watch_routes(board, hub))
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
