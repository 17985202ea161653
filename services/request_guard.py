"""The side service's ASGI middleware: the bearer token and the request body limit.

:class:`RequestGuard` wraps the FastAPI app (:func:`online_gim.services.api.build_app`): every path but
:data:`OPEN_PATHS` needs the token, and no request body larger than :data:`MAX_BODY_BYTES` is ever
held, whatever its transfer encoding.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qs

MAX_BODY_BYTES = 1 << 20
"""Larger request bodies are refused (413): a declared one before it is read, a chunked one when
its first bytes beyond the limit arrive (what came before is all that is held)."""

OPEN_PATHS = frozenset({"/healthz"})
"""Paths served without the token."""


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
