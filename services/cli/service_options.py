"""The side service's options of ``online-gim listen``: ``--http``, ``--no-http``, ``--token``.

Usage in a command module::

    from online_gim.services.cli import service_options

    def register(subparsers):
        parser = subparsers.add_parser("listen", ...)
        service_options.add_arguments(parser)

    def run(args):
        options = service_options.from_args(args)      # before building anything slow; raises CliError
        board = LiveBoard(source=..., ...)
        service = service_options.start(options, board)   # None with --no-http; raises CliError
        try:
            ...  # the session calls board.on_step(window, report) after every learner step
        finally:
            if service is not None:
                service.stop()
            board.close()
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from online_gim.services.cli import CliError

if TYPE_CHECKING:
    from online_gim.services.http import ServiceHandle
    from online_gim.services.live import LiveBoard

DEFAULT_ADDRESS = "127.0.0.1:8000"


@dataclass(frozen=True)
class ServiceOptions:
    """Where to serve the side service, and its token (``None``: no token)."""

    host: str
    port: int
    token: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("side service (HTTP API, Prometheus metrics, dashboard)")
    group.add_argument(
        "--http", metavar="HOST:PORT", default=DEFAULT_ADDRESS,
        help=f"where to serve the API, /metrics and the dashboard (default {DEFAULT_ADDRESS}; port 0 = any free "
        "port; a non-loopback host needs --token)",
    )
    group.add_argument("--no-http", action="store_true", help="do not start the side service")
    group.add_argument(
        "--token", default=None,
        help="bearer token required on every endpoint but /healthz (default: $ONLINE_GIM_TOKEN)",
    )


def from_args(args: argparse.Namespace) -> ServiceOptions | None:
    """The service's options (``None`` with ``--no-http``), checked early, before the source and the
    learner are built: a malformed ``--http``, or a non-loopback address without a token, fail.

    Raises:
        CliError: with one sentence saying what to change.
    """
    if args.no_http:
        return None
    from online_gim.services.http import TOKEN_ENV, ServiceConfigError, check_address, parse_host_port

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    try:
        host, port = parse_host_port(args.http)
        check_address(host, token)
    except ServiceConfigError as error:
        raise CliError(str(error)) from None
    return ServiceOptions(host, port, token)


def start(options: ServiceOptions, board: LiveBoard) -> ServiceHandle:
    """Starts the service for ``board`` in a thread of this process.

    Raises:
        CliError: the port is in use (or the address cannot be served).
    """
    from online_gim.services.http import ServiceConfigError, serve_in_thread

    try:
        return serve_in_thread(board, options.host, options.port, options.token)
    except ServiceConfigError as error:
        raise CliError(str(error)) from None
