"""The ``--replay``, ``--replay-minutes`` and ``--replay-policy`` options that ``listen`` and ``eval``
share, and the :class:`~online_gim.streams.replay_config.ReplayConfig` they give."""

from __future__ import annotations

import argparse
from typing import get_args

from online_gim.services.cli import CliError
from online_gim.streams.replay_config import ReplayConfig, ReplayPolicy


def add_replay_arguments(group: argparse._ActionsContainer, ratio_help: str) -> None:
    """Adds the three options to ``group`` (a parser or an argument group); ``ratio_help`` says what
    ``--replay R`` does in that command."""
    group.add_argument("--replay", type=float, default=0.0, metavar="R", help=ratio_help)
    group.add_argument("--replay-minutes", type=float, default=ReplayConfig.minutes, metavar="M",
                       help=f"minutes of recent audio the replay store holds (default {ReplayConfig.minutes:g}; "
                       "1.9 MB per minute)")
    group.add_argument("--replay-policy", choices=get_args(ReplayPolicy), default=ReplayConfig.policy,
                       help=f"how replayed windows are drawn from the store (default {ReplayConfig.policy}; "
                       "see docs/replay.md)")


def replay_config(args: argparse.Namespace) -> ReplayConfig:
    """The options as a :class:`ReplayConfig`; a value it refuses is a :class:`CliError`."""
    try:
        return ReplayConfig(ratio=args.replay, minutes=args.replay_minutes, policy=args.replay_policy)
    except ValueError as error:
        raise CliError(f"--replay: {error}") from None
