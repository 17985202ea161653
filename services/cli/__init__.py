"""The ``online-gim`` command line.

The CLI is the application layer: it composes ``streams`` (sources), ``online_gim`` (the learner)
and ``services`` (HTTP, metrics), so it lives in ``services``, the rightmost package.

Each sub-command is a module of this package with ``register(subparsers)`` that adds its parser
and sets ``func`` to a callable ``(args) -> int`` (the exit code). Command modules import heavy
libraries (torch, faiss) inside their ``func`` so that ``online-gim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("listen", "corpus", "bench", "eval", "state")
"""Sub-command modules, in the order their commands appear in ``--help``."""


EXIT_NOT_SAVED = 3
"""Exit code of a ``listen --state`` run whose learning could not all be saved (its checkpoints
failed: disk full, directory gone); 1 is a source error, 2 a :class:`CliError`."""

EXIT_PEER_LOST = 4
"""Exit code of every process of a scaled-out run (``--pipeline``, ``--replicas``) that stopped
because another process of the run was lost (killed, crashed, unreachable)."""


class CliError(Exception):
    """An error the user can fix; printed as one sentence, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="online-gim",
        description="Learn audio (and video) representations while listening: "
        "streaming Greedy InfoMax / CLAPP, no backpropagation across modules or through time.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a scaled-out run re-executes under torchrun
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as error:
        print(f"online-gim {args.command}: error: {error}", file=sys.stderr)
        return 2
