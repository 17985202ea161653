"""The side service's options of ``online-gim listen``: ``--http``, ``--no-http``, ``--token``.

Usage in a command module::

    from services.cli import service_options

    def register(subparsers):
        parser = subparsers.add_parser("listen", ...)
        service_options.add_arguments(parser)

    def run(args):
        service_options.check(args)                    # before building anything slow; raises CliError
        board = LiveBoard(source=args.source, ...)
        service = service_options.start(args, board)   # None with --no-http; raises CliError
        try:
            ...  # board.on_step(window, report, counters) after every learner step
        finally:
            if service is not None:
                service.stop()
            board.close()
"""

from __future__ import annotations

import argparse
import os

from services.cli import CliError

DEFAULT_ADDRESS = "127.0.0.1:8000"


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


def _token(args: argparse.Namespace) -> str | None:
    from services.http import TOKEN_ENV

    return args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None


def check(args: argparse.Namespace) -> None:
    """Fail early, before the source and learner are built, on options that cannot work: a
    malformed ``--http``, or a non-loopback address without a token.

    Raises:
        CliError: with one sentence saying what to change.
    """
    if getattr(args, "no_http", False):
        return
    from services.http import ServiceConfigError, check_address, parse_host_port

    try:
        host, _ = parse_host_port(args.http)
        check_address(host, _token(args))
    except ServiceConfigError as error:
        raise CliError(str(error)) from None


def start(args: argparse.Namespace, board):  # -> services.http.ServiceHandle | None
    """Start the service for ``board`` as the options say, or ``None`` with ``--no-http``.

    Raises:
        CliError: a malformed address, a non-loopback address without a token, a port in use.
    """
    if getattr(args, "no_http", False):
        return None
    from services.http import ServiceConfigError, parse_host_port, serve_in_thread

    token = _token(args)
    try:
        host, port = parse_host_port(args.http)
        handle = serve_in_thread(board, host, port, token)
    except ServiceConfigError as error:
        raise CliError(str(error)) from None
    return handle
