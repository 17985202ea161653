"""Runs the side service's HTTP server in a background thread of the listening process.

Usage::

    from online_gim.services.http import serve_in_thread
    handle = serve_in_thread(board, "127.0.0.1", 8000, token=None)   # port 0 = any free port
    print(handle.url)          # http://127.0.0.1:8000
    ...
    handle.stop()

Safety: the service binds to loopback by default. Binding to any other address (``0.0.0.0``, a
LAN address, a host name other than ``localhost``) without a token raises
:class:`ServiceConfigError` and nothing is started; with a token, every path but ``/healthz``
requires it (``Authorization: Bearer <token>`` or ``?token=<token>``).

The server (uvicorn, one asyncio loop) runs on its own thread and only reads the board's published
snapshots, so it never holds up the learner's thread.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from online_gim.services.api import build_app
from online_gim.services.event_stream import EventHub
from online_gim.services.live import LiveBoard

TOKEN_ENV = "ONLINE_GIM_TOKEN"
"""Environment variable the CLI reads the token from when ``--token`` is not given."""


class ServiceConfigError(ValueError):
    """The service cannot start as asked (non-loopback without a token, address in use, ...)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_host_port(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8000"`` for IPv6) -> ``(host, port)``; raises ServiceConfigError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServiceConfigError(f"--http wants HOST:PORT with a port 0..65535 (e.g. 127.0.0.1:8000), got {text!r}")
    return host.strip("[]"), int(port)


def check_address(host: str, token: str | None) -> None:
    """Raise :class:`ServiceConfigError` unless serving on ``host`` with ``token`` is allowed:
    a non-loopback host needs a (non-empty) token."""
    if token is not None and not token.strip():
        raise ServiceConfigError("the token must not be empty")
    if not is_loopback(host) and not token:
        raise ServiceConfigError(
            f"refusing to serve on {host}, which is not a loopback address, without a token: "
            f"pass --token or set {TOKEN_ENV} (or bind to 127.0.0.1)"
        )


@dataclass
class ServiceHandle:
    """A running service: its address and how to stop it."""

    url: str
    host: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread
    _hub: EventHub

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to finish (event streams end at once) and wait for its thread."""
        self._hub.stop_threadsafe()
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def serve_in_thread(
    board: LiveBoard, host: str, port: int, token: str | None, *, start_timeout: float = 10.0
) -> ServiceHandle:
    """Start the HTTP service for ``board`` on ``host:port`` in a daemon thread and wait until it
    accepts connections.

    Raises:
        ServiceConfigError: a non-loopback ``host`` without a token, an empty token, or the address
            cannot be bound (in use, not on this machine).
    """
    check_address(host, token)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    app = build_app(board, token=token)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="online-gim-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        thread.join(2.0)
        sock.close()
        raise ServiceConfigError(f"the HTTP service did not start on {host}:{bound_port}")
    shown = f"[{host}]" if ":" in host else host
    return ServiceHandle(url=f"http://{shown}:{bound_port}", host=host, port=bound_port, _server=server, _thread=thread, _hub=app.state.hub)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServiceConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
